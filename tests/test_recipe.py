"""The helper recipes share: timed stages in a resumable report, the time cap, machine info."""

from __future__ import annotations

import json

import pytest

from distill.recipe import Recipe, TimeCapReached, best_checkpoint, cache_complete


def test_a_stage_in_the_report_is_not_run_again_after_a_restart(tmp_path):
    calls = []
    first = Recipe(tmp_path, render=lambda r: f"stages: {sorted(r['stages'])}\n")
    assert first.stage("teacher", lambda: calls.append("teacher") or {"dev": 0.8}, keep=True) == {"dev": 0.8}

    def killed() -> None:
        raise KeyboardInterrupt  # a kill in the middle of the second stage

    with pytest.raises(KeyboardInterrupt):
        first.stage("cache", killed)
    again = Recipe(tmp_path)
    assert again.stage("teacher", lambda: calls.append("teacher again"), keep=True) == {"dev": 0.8}
    again.stage("cache", lambda: calls.append("cache"))
    assert calls == ["teacher", "cache"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["results"] == {"teacher": {"dev": 0.8}} and set(saved["stages"]) == {"teacher", "cache"}
    assert {"cpu", "cores", "threads", "torch", "date"} <= set(saved["machine"])
    assert (tmp_path / "report.md").read_text() == "stages: ['teacher']\n"  # the first run's renderer
    assert Recipe(tmp_path, resume=False).report["stages"] == {}


def test_the_time_cap_stops_before_a_stage_and_keeps_the_report(tmp_path):
    recipe = Recipe(tmp_path, time_cap_s=0.0)
    recipe.start -= 1.0  # a second has passed
    with pytest.raises(TimeCapReached, match="'fit'.*run the same command again"):
        recipe.stage("fit", lambda: pytest.fail("a stage started after the cap"))
    assert json.loads((tmp_path / "report.json").read_text())["stages"] == {}
    assert Recipe(tmp_path, time_cap_s=60).stage("fit", lambda: 1) == 1  # under the cap it runs


def test_finished_caches_and_checkpoints_are_found(tmp_path):
    assert not cache_complete(tmp_path) and best_checkpoint(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False}))
    assert not cache_complete(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": True}))
    assert cache_complete(tmp_path)
    (tmp_path / "logs" / "checkpoints").mkdir(parents=True)
    (tmp_path / "logs" / "checkpoints" / "last.ckpt").write_text("")
    assert best_checkpoint(tmp_path) is None
    (tmp_path / "logs" / "checkpoints" / "best-epoch=1.ckpt").write_text("")
    assert best_checkpoint(tmp_path).endswith("best-epoch=1.ckpt")
