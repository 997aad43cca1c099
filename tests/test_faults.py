"""Faults through the CLI with real processes and signals: kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_args import ROOT, student_args, teacher_args


def _fit(args: list[str], ckpt_dir: Path, kill_at: int | None = None, resume: bool = False) -> int:
    callbacks = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(ckpt_dir), "every_n_train_steps": 2, "save_last": True,
                                "save_top_k": -1, "filename": "{step}", "enable_version_counter": False}}]
    if kill_at is not None:
        callbacks.append({"class_path": "killer.KillAtStep", "init_args": {"step": kill_at}})
    cmd = [sys.executable, "-m", "distill", "fit", *args, f"--trainer.callbacks={json.dumps(callbacks)}",
           "--trainer.max_steps=9", "--trainer.limit_val_batches=0", "--trainer.logger=false",
           "--trainer.precision=32-true", "--data.init_args.batch_size=16", "--model.init_args.lr=1e-3",
           *(["--ckpt_path", "last"] if resume else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if kill_at is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(kind, tiny_backbone, pair_files, score_cache, tmp_path):
    """SIGKILL right after the step-4 checkpoint (mid-epoch, 6 batches per epoch), then `--ckpt_path last`:
    the run crosses an epoch and ends with the same weights as one that was never killed (same batches, same
    order, same dropout masks), within 1e-5."""
    def args(out: Path) -> list[str]:
        if kind == "teacher":
            return teacher_args(tiny_backbone, pair_files, out)
        return student_args(tiny_backbone, pair_files, out, score_cache)

    _fit(args(tmp_path / "a"), tmp_path / "a/ckpt")
    assert _fit(args(tmp_path / "b"), tmp_path / "b/ckpt", kill_at=4) == -signal.SIGKILL
    assert not (tmp_path / "b/ckpt/step=8.ckpt").exists() and (tmp_path / "b/ckpt/last.ckpt").exists()
    _fit(args(tmp_path / "b"), tmp_path / "b/ckpt", resume=True)
    a, b = _weights(tmp_path / "a/ckpt/last.ckpt"), _weights(tmp_path / "b/ckpt/last.ckpt")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    early = _weights(tmp_path / "b/ckpt/step=2.ckpt")
    moved = max((a[k].float() - early[k].float()).abs().max().item() for k in a)
    assert moved > 1e-3  # the comparison is between trained weights, not two copies of the start


BAD_FILES = {
    "missing column": ("bad.csv", b"text_a,label\nx,1\n", "missing column(s) ['text_b']"),
    "nan score": ("bad.csv", b"text_a,text_b,label\na man.,a dog.,1\na cat.,a car.,nan\n", "row 2"),
    "inf score": ("bad.csv", b"text_a,text_b,label\na man.,a dog.,inf\n", "row 1"),
    "non-numeric score": ("bad.csv", b"text_a,text_b,label\na man.,a dog.,high\n", "row 1"),
    "score outside label_range": ("bad.csv", b"text_a,text_b,label\na man.,a dog.,6\n", "row 1"),
    "whitespace-only text": ("bad.csv", b"text_a,text_b,label\na man.,a dog.,1\n   ,a dog.,2\n", "row 2"),
    "invalid utf-8": ("bad.csv", b"text_a,text_b,label\na man.,a dog.,1\na \xff cat.,a dog.,2\n", "line 3"),
    "duplicate pair_id": ("bad.csv", b"id,text_a,text_b,label\np,a man.,a dog.,1\np,a cat.,a dog.,2\n", "row 2"),
    "zero rows": ("bad.csv", b"text_a,text_b,label\n", "no rows"),
    "not the declared format": ("bad.parquet", b"text_a,text_b,label\na man.,a dog.,1\n", "cannot be read as parquet"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_training_file_is_one_line_and_writes_nothing(case, tiny_backbone, pair_files, tmp_path, capsys):
    """Each bad file stops `distill fit` before any output: one line naming the file, the row and the fix."""
    from unittest import mock

    from distill.cli import main

    name, content, where = BAD_FILES[case]
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "run"
    args = ["fit", *teacher_args(tiny_backbone, {**pair_files, "train": str(bad)}, out)]
    if case == "duplicate pair_id":
        args.append("--data.init_args.id_column=id")
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(args)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("distill: error: ")]
    assert done.value.code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert str(bad) in errors[0] and where in errors[0]
    assert any(fix in errors[0].lower() for fix in ("set data.init_args", "fix", "re-encode", "remove", "make the ids",
                                            "point the config", "check the file")), errors[0]
    assert not list(out.rglob("*.ckpt"))


def test_long_texts_are_truncated_with_one_counting_warning(tiny_backbone, pair_files, tmp_path):
    """A text beyond max_length is not an error: it is cut, and one warning says how many rows were."""
    from unittest import mock

    from distill.cli import run

    long_file = tmp_path / "long.csv"
    long_file.write_text("text_a,text_b,label\n" + "a man.,a dog.,1\n" * 3 + ("a man " * 200) + ",a dog.,2\n")
    with mock.patch("sys.argv", ["distill"]), pytest.warns(UserWarning, match=r"1 of 4 rows reach max_length=32"):
        run(["fit", *teacher_args(tiny_backbone, {**pair_files, "train": str(long_file)}, tmp_path),
             "--model.init_args.max_length=32",
             "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.logger=false"])


def test_same_config_and_seed_give_identical_metrics(tiny_backbone, pair_files, score_cache, tmp_path):
    """Two CPU runs of one config and seed agree exactly (metrics and weights)."""
    from unittest import mock

    from distill.cli import run

    results = []
    for name in ("one", "two"):
        with mock.patch("sys.argv", ["distill"]):
            cli = run(["fit", *student_args(tiny_backbone, pair_files, tmp_path / name, score_cache),
                       "--trainer.max_epochs=2"])
        results.append(({k: float(v) for k, v in cli.trainer.callback_metrics.items()}, cli.model.state_dict()))
    (m1, w1), (m2, w2) = results
    assert m1 == m2 and "val/spearman" in m1
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("change", ["teacher checkpoint", "tokenizer", "data file", "split"])
def test_stale_cache_is_refused_naming_the_field(change, tiny_backbone, pair_files, teacher_ckpt, score_cache,
                                                  tmp_path):
    """Rerunning `distill cache` into an existing cache with anything changed is refused with the field named;
    --overwrite replaces it and says so loudly."""
    import shutil
    from unittest import mock

    from cli_args import cache_args

    from distill.cache import CacheError
    from distill.cli import run

    out = tmp_path / "cache"
    shutil.copytree(score_cache, out)
    backbone, pairs, ckpt, extra = tiny_backbone, pair_files, teacher_ckpt, []
    if change == "teacher checkpoint":
        state = torch.load(teacher_ckpt, weights_only=True)
        state["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
        ckpt = str(tmp_path / "other.ckpt")
        torch.save(state, ckpt)
        field = "teacher.checkpoint_sha256"
    elif change == "tokenizer":  # the same backbone folder, its vocabulary edited in place after caching
        backbone = str(tmp_path / "backbone")
        shutil.copytree(tiny_backbone, backbone)
        state = torch.load(teacher_ckpt, weights_only=True)
        state["hyper_parameters"]["backbone"] = backbone
        ckpt = str(tmp_path / "teacher.ckpt")
        torch.save(state, ckpt)
        shutil.rmtree(out)
        with mock.patch("sys.argv", ["distill"]):
            run(cache_args(backbone, pairs, ckpt, out))
        vocab = (Path(backbone) / "vocab.txt").read_text().splitlines()
        vocab[-1], vocab[-2] = vocab[-2], vocab[-1]  # same size, other ids: the weights still fit
        (Path(backbone) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (Path(backbone) / "tokenizer.json").unlink()
        from distill.data import load_tokenizer

        load_tokenizer.cache_clear()
        field = "teacher.tokenizer_sha256"
    elif change == "data file":
        pairs, field = {**pair_files, "train": pair_files["dev"]}, "data.fingerprint"
    else:
        extra, field = [f"--data.init_args.val={pair_files['train']}", "--split", "val"], "data.split"
    args = [*cache_args(backbone, pairs, ckpt, out), *extra]
    with mock.patch("sys.argv", ["distill"]), pytest.raises(CacheError, match=field):
        run(args)
    with mock.patch("sys.argv", ["distill"]):
        run([*args, "--overwrite", "true"])
    assert json.loads((out / "manifest.json").read_text())["complete"]


@pytest.mark.parametrize(("first", "then"), [(1, 2), (2, 1)], ids=["1-process-then-2", "2-process-then-1"])
def test_kill_9_during_cache_then_resume(first, then, tiny_backbone, pair_files, teacher_ckpt, score_cache, tmp_path):
    """`distill cache` killed after its first shard, with a stray partial temp file left behind, resumes with
    another number of processes: every pair exactly once, scores equal to an uninterrupted cache."""
    from unittest import mock

    from cli_args import cache_args

    from distill.cache import ScoreCache
    from distill.cli import run

    out = tmp_path / "cache"
    args = cache_args(tiny_backbone, pair_files, teacher_ckpt, out)
    ddp = ["--devices", "2", "--strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/kill_cache.py"), *args, *(ddp if first == 2 else [])],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode != 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    written = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert not manifest["complete"] and 1 <= len(written) < 3, written
    (out / "shard-000000064-000000096.parquet.tmp4242").write_bytes(b"PAR1 half a shard")
    with mock.patch("sys.argv", ["distill"]):
        run([*args, *(["--devices", "2", "--strategy", "ddp_spawn"] if then == 2 else [])])
    resumed, reference = ScoreCache(out), ScoreCache(score_cache)
    assert resumed.manifest["complete"] and [s["rows"] for s in resumed.manifest["shards"]] == [32, 32, 32]
    got, want = resumed.scores(), reference.scores()
    assert got.keys() == want.keys() and len(got) == 96
    assert [got[k] for k in want] == pytest.approx([want[k] for k in want], abs=1e-5)
