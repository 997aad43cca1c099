"""The pipeline through the CLI on tiny models: teacher fit/test/predict, cache, student fit/test/predict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pyarrow.parquet as pq
import pytest
from cli_args import QUIET, ROOT, cache_args, student_args, teacher_args  # noqa: F401

from distill import cache as cache_mod
from distill.checkpoints import CheckpointError
from distill.cli import main, run


def test_teacher_test_logs_spearman(tiny_backbone, pair_files, teacher_ckpt, tmp_path):
    """`distill test` on the selected checkpoint reports test/spearman equal to scipy's Spearman of the same
    checkpoint's predicted scores against the gold labels (a metric on the wrong split, rows or labels is not)."""
    from scipy.stats import spearmanr

    from distill.data import read_pairs

    out = tmp_path / "scores.parquet"
    with mock.patch("sys.argv", ["distill"]):
        # bf16 kept on any CPU (distill.machine.run_precision would switch to fp32): the guard below is about bf16
        bf16 = ["--keep_precision", "true"]
        cli = run(["test", *teacher_args(tiny_backbone, pair_files, tmp_path), "--ckpt_path", teacher_ckpt, *bf16])
        run(["predict", *teacher_args(tiny_backbone, pair_files, tmp_path), "--ckpt_path", teacher_ckpt,
             f"--data.init_args.predict={pair_files['test']}", "--predictions", str(out), *bf16])
    logged = float(cli.trainer.callback_metrics["test/spearman"])
    gold = read_pairs(pair_files["test"], label_range=(0, 5))[0]["label"]
    expected = spearmanr(pq.read_table(out).column("score").to_pylist(), gold).statistic
    # under bf16-mixed a sigmoid taken in bf16 tied every pair and logged exactly 0 here
    assert logged == pytest.approx(expected, abs=1e-4) and logged != 0


def test_teacher_predict_writes_scores(tiny_backbone, pair_files, teacher_ckpt, tmp_path):
    """Teacher predictions land in Parquet with one score per pair, in file order."""
    out = tmp_path / "scores.parquet"
    with mock.patch("sys.argv", ["distill"]):
        run(["predict", *teacher_args(tiny_backbone, pair_files, tmp_path), "--ckpt_path", teacher_ckpt,
             f"--data.init_args.predict={pair_files['test']}", "--predictions", str(out)])
    table = pq.read_table(out)
    assert table.num_rows == 48 and set(table.column_names) == {"pair_id", "score"}
    from distill.data import read_pairs

    assert table.column("pair_id").to_pylist() == read_pairs(pair_files["test"], label_range=(0, 5))[0]["pair_id"]


def test_cache_round_trip(score_cache: Path, pair_files):
    """The manifest lists every shard with rows and sha256, and reading applies the sigmoid transform."""
    manifest = json.loads((score_cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["format"] == 1
    assert [s["rows"] for s in manifest["shards"]] == [32, 32, 32]
    assert manifest["teacher"]["score_transform"] == "sigmoid" and manifest["data"]["n_pairs"] == 96
    assert manifest["data"]["label_range"] == [0.0, 5.0]
    scores = cache_mod.ScoreCache(score_cache).scores()
    raw = pq.read_table(score_cache / manifest["shards"][0]["file"]).to_pylist()
    assert len(scores) == 96
    expected = 1 / (1 + __import__("math").exp(-raw[0]["score"]))
    assert scores[raw[0]["pair_id"]] == pytest.approx(expected, abs=1e-6)


def test_cache_resume_recomputes_only_bad_shards(tiny_backbone, pair_files, teacher_ckpt, score_cache, tmp_path):
    """A rerun keeps verified shards and recomputes a deleted and a truncated one, with equal scores."""
    out = tmp_path / "c"
    shutil.copytree(score_cache, out)
    manifest = json.loads((out / "manifest.json").read_text())
    first, second, third = (out / s["file"] for s in manifest["shards"])
    before = pq.read_table(second).to_pylist()
    kept_mtime = first.stat().st_mtime_ns
    second.unlink()
    third.write_bytes(third.read_bytes()[:50])  # truncated: must not be read as a shard
    with mock.patch("sys.argv", ["distill"]):
        run(cache_args(tiny_backbone, pair_files, teacher_ckpt, out))
    assert first.stat().st_mtime_ns == kept_mtime
    after = pq.read_table(second).to_pylist()
    assert [r["pair_id"] for r in after] == [r["pair_id"] for r in before]
    assert [r["score"] for r in after] == pytest.approx([r["score"] for r in before], abs=1e-5)
    assert len(cache_mod.ScoreCache(out).scores()) == 96


def test_cache_refuses_other_data(tiny_backbone, pair_files, teacher_ckpt, score_cache, tmp_path):
    """A cache made for other data is refused, naming the differing field."""
    out = tmp_path / "c"
    shutil.copytree(score_cache, out)
    args = cache_args(tiny_backbone, {**pair_files, "train": pair_files["dev"]}, teacher_ckpt, out)
    with mock.patch("sys.argv", ["distill"]), pytest.raises(cache_mod.CacheError, match="data.fingerprint"):
        run(args)


def test_cache_refuses_other_teacher(tiny_backbone, pair_files, teacher_ckpt, score_cache, tmp_path):
    """A cache made by another teacher checkpoint is refused, naming teacher.checkpoint_sha256."""
    out = tmp_path / "c"
    shutil.copytree(score_cache, out)
    other = tmp_path / "other.ckpt"
    import torch

    ckpt = torch.load(teacher_ckpt, weights_only=True)
    ckpt["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, other)
    with mock.patch("sys.argv", ["distill"]), pytest.raises(cache_mod.CacheError, match="teacher.checkpoint_sha256"):
        run(cache_args(tiny_backbone, pair_files, str(other), out))


def test_cache_rejects_a_file_that_is_not_a_checkpoint(tiny_backbone, pair_files, tmp_path):
    """A text file passed as --ckpt_path is named as not a checkpoint, not unpickled into a traceback."""
    bad = tmp_path / "model.ckpt"
    bad.write_text("not a checkpoint")
    with mock.patch("sys.argv", ["distill"]), pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        run(cache_args(tiny_backbone, pair_files, str(bad), tmp_path / "c"))


def test_student_distils_tests_and_predicts(tiny_backbone, pair_files, score_cache, teacher_ckpt, tmp_path):
    """Fit a DSE student on cached scores, test it (both modes logged), embed texts to Parquet,
    and refuse a student checkpoint given to `distill cache` as a teacher's."""
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *student_args(tiny_backbone, pair_files, tmp_path, score_cache), "--trainer.max_epochs=1"])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    logged = cli.trainer.logged_metrics
    assert {"train/teacher_mse", "train/gold_mse", "val/spearman_cosine", "val/spearman_dse"} <= set(logged)
    with mock.patch("sys.argv", ["distill"]):
        tested = run(["test", *student_args(tiny_backbone, pair_files, tmp_path, score_cache), "--ckpt_path", ckpt])
    metrics = tested.trainer.callback_metrics
    assert {"test/spearman", "test/spearman_cosine", "test/spearman_dse"} <= set(metrics)
    texts = tmp_path / "texts.csv"
    texts.write_text("id,text\n1,a man plays guitar.\n2,the cat sits on the mat.\n")
    out = tmp_path / "emb.parquet"
    with mock.patch("sys.argv", ["distill"]):
        run(["predict", *student_args(tiny_backbone, pair_files, tmp_path, score_cache), "--ckpt_path", ckpt,
             f"--data.init_args.predict={texts}", "--predictions", str(out)])
    table = pq.read_table(out).to_pydict()
    assert table["id"] == ["1", "2"] and len(table["embedding"][0]) == 32
    with mock.patch("sys.argv", ["distill"]), pytest.raises(CheckpointError, match="do not fit CrossEncoder"):
        run(cache_args(tiny_backbone, pair_files, ckpt, tmp_path / "c"))


def test_teacher_objective_without_cache_names_the_fix(tiny_backbone, pair_files, tmp_path):
    """An objective that needs teacher scores, with no cache configured, says which key to set."""
    with mock.patch("sys.argv", ["distill"]), pytest.raises(ValueError, match="data.init_args.cache_dir"):
        run(["fit", *student_args(tiny_backbone, pair_files, tmp_path, None), "--trainer.max_epochs=1"])


def test_gold_only_control_needs_no_cache(tiny_backbone, pair_files, tmp_path):
    """Teacher weight 0 switches the teacher term off entirely (the quickstart's control)."""
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *student_args(tiny_backbone, pair_files, tmp_path, None), "--trainer.max_steps=2",
                   "--model.init_args.objectives.teacher_mse.init_args.weight=0",
                   "--model.init_args.objectives.gold_mse.init_args.weight=1"])
    assert "train/teacher_mse" not in cli.trainer.logged_metrics and "train/gold_mse" in cli.trainer.logged_metrics


def test_cache_under_two_process_ddp_matches_one_process(tiny_backbone, pair_files, teacher_ckpt, score_cache,
                                                          tmp_path):
    """`distill cache` shards across 2 DDP ranks (gloo): every pair exactly once, scores equal to 1 process."""
    out = tmp_path / "ddp"
    with mock.patch("sys.argv", ["distill"]):
        run([*cache_args(tiny_backbone, pair_files, teacher_ckpt, out), "--devices", "2", "--strategy", "ddp_spawn"])
    one, two = cache_mod.ScoreCache(score_cache).scores(), cache_mod.ScoreCache(out).scores()
    assert one.keys() == two.keys() and len(two) == 96
    assert [two[k] for k in one] == pytest.approx([one[k] for k in one], abs=1e-5)


def test_student_refuses_a_cache_for_other_data(tiny_backbone, pair_files, score_cache, tmp_path):
    """Training pairs without a cached teacher score stop the fit, naming the cache and the fix."""
    other = {**pair_files, "train": pair_files["test"]}
    with mock.patch("sys.argv", ["distill"]), pytest.raises(cache_mod.CacheError, match="have no teacher score"):
        run(["fit", *student_args(tiny_backbone, other, tmp_path, score_cache), "--trainer.max_steps=1"])


def test_incomplete_cache_is_refused(score_cache, tmp_path):
    """A cache whose run was interrupted (complete: false) is never read as if it were whole."""
    out = tmp_path / "c"
    shutil.copytree(score_cache, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(cache_mod.CacheError, match="incomplete"):
        cache_mod.ScoreCache(out)


def _one_line_error(capsys, argv: list[str]) -> str:
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("distill: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_bad_data_file_through_the_cli_is_one_line(tiny_backbone, pair_files, tmp_path, capsys):
    """A NaN label in a user's training file stops `distill fit` with one line naming file and row."""
    bad = tmp_path / "bad.csv"
    bad.write_text("text_a,text_b,label\na man.,a dog.,1\na cat.,a car.,nan\n")
    line = _one_line_error(capsys, ["fit", *teacher_args(tiny_backbone, {**pair_files, "train": str(bad)}, tmp_path)])
    assert str(bad) in line and "row 2" in line


def test_trainer_verbs_refuse_bad_checkpoints(tiny_backbone, pair_files, teacher_ckpt, tmp_path, capsys):
    """`distill test --ckpt_path` with a non-checkpoint, or a teacher's checkpoint for a student, is one line."""
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage")
    line = _one_line_error(capsys, ["test", *teacher_args(tiny_backbone, pair_files, tmp_path),
                                    "--ckpt_path", str(junk)])
    assert "not a Lightning checkpoint" in line and str(junk) in line
    line = _one_line_error(capsys, ["test", *student_args(tiny_backbone, pair_files, tmp_path, None),
                                    "--ckpt_path", teacher_ckpt])
    assert "checkpoint of teachers.CrossEncoder, but the config's model is distill.module.DistillModule" in line


def test_student_fit_under_two_process_ddp(tiny_backbone, pair_files, score_cache, tmp_path):
    """`distill fit --trainer.devices=2 --trainer.strategy=ddp` runs as users launch it (gloo on CPU)."""
    args = [sys.executable, "-m", "distill", "fit", *student_args(tiny_backbone, pair_files, tmp_path, score_cache),
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = (tmp_path / "logs/version_0/metrics.csv").read_text()
    assert "val/spearman_cosine" in metrics.splitlines()[0]
    assert list((tmp_path / "logs/version_0/checkpoints").glob("best-*.ckpt"))


def test_shards_are_split_between_ranks(monkeypatch):
    """Shard k goes to rank k % world: each pair is scored by exactly one rank, whatever the world size."""
    from distill.cache import ShardBatchSampler

    shards = [(0, 4), (4, 8), (8, 10)]
    monkeypatch.setattr(cache_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(cache_mod.dist, "get_world_size", lambda: 2)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(cache_mod.dist, "get_rank", lambda r=rank: r)
        batches = list(ShardBatchSampler(shards, todo={0, 1, 2}, batch_size=3))
        seen.append([i for b in batches for i in b])
    assert seen == [[0, 1, 2, 3, 8, 9], [4, 5, 6, 7]]


def test_tokenised_rows_are_cached_on_disk_and_reused(tiny_backbone, pair_files, score_cache, tmp_path):
    """The second fit reads the tokenised Arrow file the first one wrote, keyed by data, tokenizer and options."""
    from distill.data import read_pairs, tokenised_cache_file

    def fit_once(out):
        with mock.patch("sys.argv", ["distill"]):
            cli = run(["fit", *student_args(tiny_backbone, pair_files, out, score_cache), "--trainer.max_steps=1",
                       "--trainer.limit_val_batches=0"])
        return Path(cli.datamodule.datasets["train"].cache_files[0]["filename"])

    first = fit_once(tmp_path / "one")
    written = first.stat().st_mtime_ns
    assert fit_once(tmp_path / "two") == first and first.stat().st_mtime_ns == written
    rows = read_pairs(pair_files["train"], label_range=(0, 5))[0]
    spec = {"tokenizer": tiny_backbone, "max_length": 128, "joint": False, "prefix": ""}
    assert tokenised_cache_file(rows, spec, "train") == first
    assert tokenised_cache_file(rows, {**spec, "prefix": "query: "}, "train") != first
