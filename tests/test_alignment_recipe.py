"""scripts/alignment_recipe.py's evaluation plan, verbs mocked: dev figures for every arm (the alignment arms' from
their fit logs, the others validated), the arm with the best dev score tested in full beside the zero-shot
baseline, the multilingual arm on the STS sets only, the chosen arm exported; `--test_all` tests every arm."""

from __future__ import annotations

import sys

import pytest
from scripts_loader import load_script

DEV = {"multilingual": (0.78, 0.99), "multilingual_aligned": (0.785, 0.997), "aligned": (0.78, 0.998),
       "aligned_pivot": (0.79, 0.999), "zero_shot": (0.74, 0.994)}
# (val/spearman, val/translation_acc): aligned_pivot has the best mean


def recipe_module():
    return load_script("alignment_recipe")


def dev(arm: str, dev_table: dict) -> dict[str, float]:
    return {"val/spearman": dev_table[arm][0], "val/translation_acc": dev_table[arm][1]}


def run_plan(module, tmp_path, monkeypatch, dev_table: dict, extra: list[str],
             fits: dict | None = None) -> tuple[dict, dict, list, dict]:
    validated, tested, exported = [], {}, []
    fits = {} if fits is None else fits
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(module, "run_verb", lambda args: None)  # `prepare`
    monkeypatch.setattr(module, "teacher_and_cache", lambda recipe, out, smoke: ("teacher.ckpt", "cache/train"))
    monkeypatch.setattr(module, "save_teacher_folder", lambda ckpt, folder: "teacher-folder")

    def fit(run, arm, config, extra_args):
        fits[arm] = [*config, *extra_args]
        return {"checkpoint": f"{arm}.ckpt", "fit_s": 0.0, "train_pairs": 1, "steps": 1, "parallel_data": None,
                "dev": dev(arm, dev_table)}

    def validate(run, arm, ckpt):
        validated.append(arm)
        return {"dev": dev(arm, dev_table), "dev_score": module.dev_score(dev(arm, dev_table))}

    def run_test(run, arm, ckpt, sts_only):
        tested[arm] = "sts" if sts_only else "all"
        return {"test": {"test/spearman_cosine/en": 0.8}, "tested": tested[arm]}

    def export_arm(run, report, arm):
        exported.append(arm)
        return {"arm": arm, "dev_score": report["arms"][arm]["dev_score"], "folder": "export", "prompts": {}}

    for name, fn in {"fit": fit, "validate": validate, "run_test": run_test, "export_arm": export_arm}.items():
        monkeypatch.setattr(module, name, fn)
    # --smoke: a full run would copy its report over docs/alignment-report.md
    monkeypatch.setattr(sys, "argv", ["alignment_recipe.py", "--smoke", "--out", str(tmp_path / "alignment"), *extra])
    module.main()
    import json

    report = json.loads((tmp_path / "alignment" / "report.json").read_text())
    return report, tested, validated, exported


def test_chosen_arm_and_zero_shot_tested_in_full_multilingual_on_sts(tmp_path, monkeypatch):
    module = recipe_module()
    report, tested, validated, exported = run_plan(module, tmp_path, monkeypatch, DEV, [])
    assert report["chosen"] == "aligned_pivot" and exported == ["aligned_pivot"]
    assert tested == {"zero_shot": "all", "multilingual": "sts", "aligned_pivot": "all"}
    assert sorted(validated) == ["multilingual", "zero_shot"]  # the alignment arms' dev comes from their fits
    assert report["arms"]["multilingual_aligned"]["dev"] == dev("multilingual_aligned", DEV)
    assert "aligned" not in report["arms"]  # not a default arm
    assert report["arms"]["aligned_pivot"]["dev_score"] == round((0.79 + 0.999) / 2, 4)
    text = (tmp_path / "alignment" / "report.md").read_text()
    assert "Chosen on dev: aligned_pivot" in text and "multilingual (STS sets only)" in text


def test_chosen_multilingual_is_tested_in_full_once(tmp_path, monkeypatch):
    module = recipe_module()
    table = {**DEV, "multilingual": (0.85, 0.999)}
    report, tested, _, exported = run_plan(module, tmp_path, monkeypatch, table, [])
    assert report["chosen"] == "multilingual" and exported == ["multilingual"]
    assert tested == {"zero_shot": "all", "multilingual": "all"}
    # the monolingual target compares the chosen arm with the multilingual one: against itself it is no figure
    mono = {k: v for k, v in module.targets(report, "multilingual").items() if k.startswith("STS mean of 11")}
    assert [v["met"] for v in mono.values()] == [None] and "n/a" in next(iter(mono))
    assert "STS mean of 11 languages >= multilingual - 0.005" in module.targets(report, "aligned_pivot")


def test_test_all_tests_every_arm_in_full(tmp_path, monkeypatch):
    module = recipe_module()
    _, tested, _, _ = run_plan(module, tmp_path, monkeypatch, DEV, ["--test_all"])
    assert tested == {arm: "all" for arm in module.DEFAULT_ARMS}


def test_multilingual_aligned_starts_from_and_regresses_onto_the_multilingual_arm(tmp_path, monkeypatch):
    module = recipe_module()
    fits: dict = {}
    report, _, _, _ = run_plan(module, tmp_path, monkeypatch, {**DEV, "multilingual_aligned": (0.8, 0.999)},
                               ["--arms", *module.ARMS], fits)
    assert list(fits) == ["multilingual", "multilingual_aligned", "aligned_pivot", "aligned"]
    continued = fits["multilingual_aligned"]
    assert "configs/alignment/multilingual-aligned.yaml" in continued
    assert "--model.init_args.student.init_args.backbone=teacher-folder" in continued
    assert "--data.init_args.teacher_embeddings=teacher-folder" in continued
    for arm in ("aligned", "aligned_pivot"):  # the others start from multilingual-e5-small, as configured
        assert not any(a.startswith("--model.init_args.student.init_args.backbone") for a in fits[arm])
    assert report["chosen"] == "multilingual_aligned"


def test_selected_dev_reads_the_row_that_selected_the_checkpoint(tmp_path):
    module = recipe_module()
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/spearman,val/translation_acc\n"
                   "0,9,0.5,,\n0,10,,0.70,0.990\n0,19,0.4,,\n0,20,,0.75,0.980\n0,30,,0.72,0.999\n")
    assert module.selected_dev(csv) == {"val/spearman": 0.75, "val/translation_acc": 0.98}
    csv.write_text("epoch,step,train/loss,val/spearman\n0,9,0.5,\n")
    with pytest.raises(RuntimeError, match="no val/spearman row"):
        module.selected_dev(csv)


def test_dev_row_reads_the_cross_lingual_ratio_the_targets_read():
    module = recipe_module()
    dev = {f"val/spearman_cosine/{x}-en": 0.6 for x in module.STS_LANGUAGES if x != "en"}
    dev |= {"val/spearman_cosine/en": 0.8, "val/spearman_cosine/de-en": 0.7, "val/spearman": 0.75}
    row = module.dev_row("multilingual", {"dev": dev, "dev_score": 0.9})
    # mean of nine 0.6 and one 0.7 over English 0.8; zh-en is one of the 0.6
    assert row["mean xx-en / en"] == round(0.61 / 0.8, 4) and row["de-en"] == 0.7 and row["zh-en"] == 0.6
    missing = module.dev_row("zero_shot", {"dev": {"val/spearman": 0.7}, "dev_score": 0.8})
    assert missing["mean xx-en / en"] is None and missing["dev score"] == 0.8
