"""Checkpoints as untrusted input: a crafted `.ckpt` builds nothing outside the project's own classes, and a
truncated `last.ckpt` is one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from cli_args import student_args, teacher_args
from torch import nn

from distill.checkpoints import CheckpointError, load_model
from distill.cli import main, run


class Marker(nn.Module):
    """Stands in for a harmful nn.Module (e.g. a remote-code model): building it creates the file
    `$DISTILL_TEST_MARKER`, so a test can prove it was never built."""

    def __init__(self, path: str = "") -> None:
        super().__init__()
        Path(path or os.environ["DISTILL_TEST_MARKER"]).write_text("built")


def _student_hparams(backbone: str) -> dict:
    return {"_class_path": "distill.module.DistillModule",
            "student": {"class_path": "students.BiEncoder", "init_args": {"backbone": backbone}}}


@pytest.mark.parametrize("class_path", ["subprocess.run", "os.system",
                                        "students.bi_encoder.AutoModel", "test_hardening_checkpoints.Marker"])
def test_load_model_builds_no_foreign_class(class_path, tmp_path):
    """`load_model` (behind `distill export`/`bench`) refuses a checkpoint whose student class_path is not the
    project's own, before calling it: the command it names never runs."""
    marker = tmp_path / "ran"
    init_args = {"path": str(marker)} if "Marker" in class_path else \
        {"args": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]} if class_path == "subprocess.run" else \
        {"command": f"touch {marker}"} if class_path == "os.system" else {"pretrained_model_name_or_path": "x"}
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"student.w": torch.zeros(1)},
                "hyper_parameters": {"student": {"class_path": class_path, "init_args": init_args}}}, crafted)
    with pytest.raises(CheckpointError) as err:
        load_model(crafted)
    message = str(err.value)
    assert str(crafted) in message and class_path in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("form", ["class_path", "bare string"])
def test_ckpt_path_hyperparameters_build_no_foreign_class(form, tiny_backbone, pair_files, tmp_path, monkeypatch):
    """`--ckpt_path` merges the checkpoint's hyperparameters into the config, where an objective may be any
    nn.Module: a checkpoint naming a foreign one is refused before anything is built."""
    marker = tmp_path / "built"
    monkeypatch.setenv("DISTILL_TEST_MARKER", str(marker))
    foreign = "test_hardening_checkpoints.Marker"
    hparams = _student_hparams(tiny_backbone)
    hparams["objectives"] = {"evil": {"class_path": foreign} if form == "class_path" else foreign}
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, crafted)
    with mock.patch("sys.argv", ["distill"]), pytest.raises(CheckpointError, match=foreign) as err:
        run(["test", *student_args(tiny_backbone, pair_files, tmp_path / "run", None), "--ckpt_path", str(crafted)])
    assert str(crafted) in str(err.value)
    assert not marker.exists()


def test_own_checkpoint_still_loads(student_ckpt):
    """The allowlist lets every checkpoint `distill fit` writes through (control for the refusals above)."""
    kind, student, meta = load_model(student_ckpt)
    assert kind == "student" and type(student).__name__ == "BiEncoder"
    assert meta["class_path"] == "distill.module.DistillModule"


def test_truncated_last_checkpoint_is_one_line(tiny_backbone, pair_files, teacher_ckpt, tmp_path, capsys):
    """`--ckpt_path last` on a truncated last.ckpt (a kill while saving): one line naming the file and the fix."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(Path(teacher_ckpt).read_bytes()[:5000])
    callbacks = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(folder), "save_last": True}}]
    args = ["fit", *teacher_args(tiny_backbone, pair_files, tmp_path / "run"), "--trainer.max_steps=2",
            f"--trainer.callbacks={json.dumps(callbacks)}", "--ckpt_path", "last"]
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(args)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("distill: error: ")]
    assert done.value.code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert str(folder / "last.ckpt") in errors[0] and "delete it" in errors[0]


def test_export_of_a_crafted_checkpoint_runs_nothing(tmp_path, capsys):
    """The attack as it was reported: `distill export --ckpt crafted.ckpt` ran the command its hyperparameters
    named; now one line naming the file and the class path, and the command never runs."""
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"student.w": torch.zeros(1)},
                "hyper_parameters": {"student": {"class_path": "os.system",
                                                 "init_args": {"command": f"touch {marker}"}}}}, crafted)
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(["export", "--ckpt", str(crafted), "--out", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error: ")]
    assert done.value.code == 2 and len(errors) == 1 and str(crafted) in errors[0] and "os.system" in errors[0]
    assert not marker.exists() and not (tmp_path / "out").exists()
