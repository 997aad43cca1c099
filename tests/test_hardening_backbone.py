"""A checkpoint is rebuilt from the backbone folder it recorded: a folder that changed since (tokenizer, dtype, moved)
is refused with one line naming what changed, not silently used (issue 15 item 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from distill.checkpoints import CheckpointError, check_fits, load_model, read_checkpoint
from students import BiEncoder


def _student_checkpoint(backbone: Path, file: Path) -> Path:
    """What `distill fit` writes for a student: its state dict under `student.`, its config in the hyperparameters."""
    student = BiEncoder(backbone=str(backbone))
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
                "hyper_parameters": {"student": {"class_path": "students.BiEncoder",
                                                 "init_args": {"backbone": str(backbone)}}}}, file)
    return file


@pytest.fixture
def copied(tiny_backbone: str, tmp_path: Path) -> tuple[Path, Path]:
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, backbone)
    return backbone, _student_checkpoint(backbone, tmp_path / "student.ckpt")


def _swap_two_words(backbone: Path) -> None:
    vocab = (backbone / "vocab.txt").read_text().splitlines()
    vocab[-1], vocab[-2] = vocab[-2], vocab[-1]  # same size, other ids: the weights still fit
    (backbone / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (backbone / "tokenizer.json").unlink()


def _resave_fp16(backbone: Path, cls_name: str = "AutoModel") -> None:
    import transformers

    getattr(transformers, cls_name).from_pretrained(backbone, dtype=torch.float16).save_pretrained(backbone)


def test_an_edited_tokenizer_is_refused(copied: tuple[Path, Path]):
    """A re-prepared folder with another vocabulary (same size) fits the weights and would tokenise every text into
    other ids: the model would silently score nonsense."""
    backbone, ckpt = copied
    _swap_two_words(backbone)
    with pytest.raises(CheckpointError, match="its tokenizer is sha256") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value) and str(backbone) in str(err.value) and "re-prepare" in str(err.value)


def test_weights_resaved_in_fp16_are_refused(copied: tuple[Path, Path]):
    """`prepare --fp16` over the same folder: the rebuilt encoder would hold the trained weights rounded to fp16."""
    backbone, ckpt = copied
    _resave_fp16(backbone)
    with pytest.raises(CheckpointError, match=r"its dtype is float16 \(was float32\)"):
        load_model(ckpt)


def test_a_moved_folder_is_one_line_naming_it(copied: tuple[Path, Path]):
    backbone, ckpt = copied
    backbone.rename(backbone.with_name("elsewhere"))
    with pytest.raises(CheckpointError, match="not there any more") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value) and f"put that folder back at {backbone}" in str(err.value)


def test_resume_refuses_a_changed_folder(copied: tuple[Path, Path]):
    """`--ckpt_path` resume: the CLI's check_fits on the DistillModule, and Lightning's strict load_state_dict."""
    from distill.losses import ScoreRegression
    from distill.module import DistillModule

    backbone, ckpt = copied
    _resave_fp16(backbone)
    module = DistillModule(BiEncoder(backbone=str(backbone)), {"t": ScoreRegression()})
    state = read_checkpoint(ckpt)["state_dict"]
    with pytest.raises(CheckpointError, match="dtype"):
        check_fits(module, state, ckpt)
    with pytest.raises(CheckpointError, match="dtype"):
        module.load_state_dict(state)


def test_an_unchanged_folder_loads_and_old_checkpoints_still_do(student_ckpt: str, tmp_path: Path):
    """The fitted checkpoint records the fingerprint and loads; one written before the record loads with a warning."""
    state = read_checkpoint(student_ckpt)["state_dict"]
    assert state["student._extra_state"].numel() > 0  # written by `distill fit` itself
    kind, student, _ = load_model(student_ckpt)
    assert kind == "student"
    old = torch.load(student_ckpt, weights_only=True)
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.endswith("_extra_state")}
    torch.save(old, tmp_path / "old.ckpt")
    from distill.backbone_record import _warn_unrecorded

    _warn_unrecorded.cache_clear()  # it warns once per process
    with pytest.warns(UserWarning, match="predates the backbone fingerprint"):
        _, again, _ = load_model(tmp_path / "old.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), student.parameters()))
    again.load_state_dict({k: v for k, v in student.state_dict().items() if not k.endswith("_extra_state")})


def test_a_teacher_with_an_edited_tokenizer_is_refused(tiny_backbone: str, tmp_path: Path):
    from teachers import CrossEncoder

    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, backbone)
    teacher = CrossEncoder(backbone=str(backbone))
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, tmp_path / "t.ckpt")
    assert load_model(tmp_path / "t.ckpt")[0] == "teacher"
    _swap_two_words(backbone)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model(tmp_path / "t.ckpt")


def test_teacher_embeddings_of_a_short_name_are_keyed_by_its_folder(tiny_backbone: str, tmp_path: Path, monkeypatch):
    """Re-preparing a short-name backbone (`--fp16`) must not reuse the embeddings of the old weights."""
    from distill import embedding_cache

    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, backbone)
    monkeypatch.setattr("distill.backbones.resolve", lambda name: str(backbone) if name == "short-name" else name)
    before = embedding_cache.content_sha256("short-name")
    _resave_fp16(backbone)
    assert embedding_cache.content_sha256("short-name") != before
