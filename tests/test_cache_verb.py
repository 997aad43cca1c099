"""`distill cache` as a verb: SIGTERM stops it non-zero and a rerun resumes; --out a file; --overwrite refuses a
folder it did not write (issue 15 items 1, 13, 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_args import ROOT, cache_args

from distill.cache_join import ScoreCache
from distill.cli import run
from distill.score_cache import CacheError
from distill.signals import EXIT_STATUS


def _cache_then_signal(args: list[str], signal: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "DISTILL_TEST_SIGNAL": signal}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "kill_cache.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_sigterm_stops_cache_nonzero_and_a_rerun_resumes(tiny_backbone, pair_files, teacher_ckpt, score_cache,
                                                         tmp_path):
    out = tmp_path / "cache"
    stopped = _cache_then_signal(cache_args(tiny_backbone, pair_files, teacher_ckpt, out), "SIGTERM")
    assert stopped.returncode == EXIT_STATUS, stopped.stderr[-3000:]
    assert "cache stopped by SIGTERM" in stopped.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(list(out.glob("shard-*.parquet"))) < len(
        json.loads((score_cache / "manifest.json").read_text())["shards"])
    run(cache_args(tiny_backbone, pair_files, teacher_ckpt, out))
    assert ScoreCache(out).scores() == ScoreCache(score_cache).scores()  # same as one uninterrupted run


def test_cache_out_a_file_or_a_foreign_folder_is_one_line(tiny_backbone, pair_files, teacher_ckpt, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match=r"--out .*notes.txt is a file; give a folder"):
        run(cache_args(tiny_backbone, pair_files, teacher_ckpt, tmp_path / "notes.txt"))
    runs = tmp_path / "runs"
    (runs / "experiment").mkdir(parents=True)
    (runs / "experiment" / "report.json").write_text("{}")
    with pytest.raises(CacheError, match=r"runs is not empty and is not a folder distill cache wrote \(no manifest"):
        run([*cache_args(tiny_backbone, pair_files, teacher_ckpt, runs), "--overwrite", "true"])
    assert (runs / "experiment" / "report.json").is_file() and (tmp_path / "notes.txt").read_text() == "mine"
