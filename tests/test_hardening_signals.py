"""SIGTERM through the real CLI: `distill fit` stops within a batch, saves what resume needs and exits 143;
`distill predict` stops and exits 143 without writing a partial file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from cli_args import ROOT, student_args

from distill.signals import EXIT_STATUS


class TermAtStep(pl.Callback):
    """Sends this process SIGTERM (as preemption or `docker stop` would) when a batch of the given stage starts."""

    def __init__(self, step: int = 0, stage: str = "train") -> None:
        self.step, self.stage = step, stage

    def _maybe(self, trainer: pl.Trainer, batch_idx: int) -> None:
        if (trainer.global_step if self.stage == "train" else batch_idx) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if self.stage == "train":
            self._maybe(trainer, batch_idx)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.stage == "predict":
            self._maybe(trainer, batch_idx)


def _distill(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, timeout=180,
                          env=env)


def _fit_args(args: list[str], ckpt_dir: Path, term_at: int | None) -> list[str]:
    callbacks = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(ckpt_dir), "every_n_train_steps": 4, "save_last": True,
                                "filename": "{step}", "enable_version_counter": False}}]
    if term_at is not None:
        callbacks.append({"class_path": "test_hardening_signals.TermAtStep", "init_args": {"step": term_at}})
    return ["fit", *args, f"--trainer.callbacks={json.dumps(callbacks)}", "--trainer.max_steps=9",
            "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.precision=32-true",
            "--data.init_args.batch_size=16", "--model.init_args.lr=1e-3"]


def _state(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_sigterm_during_fit_exits_nonzero_and_resumes(tiny_backbone, pair_files, tmp_path):
    """SIGTERM at step 6 (after the step-4 checkpoint, mid-epoch): exit 143 at step 7 at the latest, a last.ckpt
    of that step, and `--ckpt_path last` from it ends with the weights of a run never interrupted."""
    args = [*student_args(tiny_backbone, pair_files, tmp_path / "run", None),
            "--model.init_args.objectives.teacher_mse.init_args.weight=0"]
    stopped = _distill(_fit_args(args, tmp_path / "b", term_at=6))
    assert stopped.returncode == EXIT_STATUS, stopped.stderr[-3000:]
    step, _ = _state(tmp_path / "b/last.ckpt")
    assert step in (6, 7), step  # stopped within a batch of the signal, not at the step-4 checkpoint
    assert "SIGTERM" in stopped.stderr and "--ckpt_path last" in stopped.stderr
    resumed = _distill([*_fit_args(args, tmp_path / "b", term_at=None), "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = _distill(_fit_args(args, tmp_path / "a", term_at=None))
    assert whole.returncode == 0, whole.stderr[-3000:]
    (step_a, a), (step_b, b) = _state(tmp_path / "a/last.ckpt"), _state(tmp_path / "b/last.ckpt")
    assert step_a == step_b == 9
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, worst


def test_sigterm_during_predict_exits_nonzero_and_writes_nothing(tiny_backbone, pair_files, tmp_path):
    """SIGTERM at the first predict batch: status 143 and no predictions file (a partial one would pass for
    the whole set)."""
    out = tmp_path / "emb.parquet"
    callbacks = [{"class_path": "test_hardening_signals.TermAtStep", "init_args": {"step": 0, "stage": "predict"}}]
    proc = _distill(["predict", *student_args(tiny_backbone, pair_files, tmp_path / "run", None),
                     f"--data.init_args.predict={pair_files['test']}", "--data.init_args.eval_batch_size=8",
                     f"--trainer.callbacks={json.dumps(callbacks)}", "--trainer.logger=false",
                     "--predictions", str(out)])
    assert proc.returncode == EXIT_STATUS, proc.stderr[-3000:]
    assert "SIGTERM" in proc.stderr and not out.exists()
