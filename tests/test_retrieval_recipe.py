"""scripts/retrieval_recipe.py's teacher plumbing, verbs mocked: `--teacher_config` reaches the teacher's fit, and the
group cache builds the teacher the fit made (its backbone and length from the run's hparams, not a fixed MiniLM)."""

from __future__ import annotations

import pytest
import yaml
from scripts_loader import load_script

from distill.recipe import Recipe


class Stop(Exception):
    pass


def recipe_module():
    return load_script("retrieval_recipe")


def test_teacher_config_reaches_the_fit_and_the_cache_builds_that_teacher(tmp_path, monkeypatch):
    module = recipe_module()
    out = tmp_path / "retrieval"
    calls: list[list[str]] = []

    def run_verb(argv: list[str]) -> None:
        calls.append(argv)
        if argv[0] == "fit":  # what `distill fit` leaves: a best checkpoint beside its run's hparams
            run = out / "teacher" / "logs" / "version_0"
            (run / "checkpoints").mkdir(parents=True)
            (run / "checkpoints" / "best-epoch=0.ckpt").write_bytes(b"")
            (run / "hparams.yaml").write_text(yaml.safe_dump({"backbone": "all-mpnet-base-v2", "max_length": 256}))
        elif argv[0] == "cache":
            raise Stop  # the stages after it need real data

    monkeypatch.setattr(module, "run_verb", run_verb)
    recipe = Recipe(out)
    recipe.report.update({"sizes": {"train": {}}, "mined": {"wide_groups": "groups.parquet"},
                          "gate": {"passed": True}})
    with pytest.raises(Stop):
        module.run_stages(recipe, recipe.report, out, out / "data", False, ["configs/retrieval/teacher-mpnet.yaml"])
    fit, cache = calls
    assert fit[:5] == ["fit", "--config", "configs/retrieval/teacher.yaml", "--config",
                       "configs/retrieval/teacher-mpnet.yaml"]
    assert recipe.report["teacher"]["configs"][-1] == "configs/retrieval/teacher-mpnet.yaml"
    assert cache[cache.index("--teacher.backbone") + 1] == "all-mpnet-base-v2"
    assert cache[cache.index("--teacher.max_length") + 1] == "256"
