"""The multilingual benchmark (issue 5): e5-small distilled across 11 languages, against its own zero-shot
baseline and a gold-only control, then trimmed to 8 languages.

Arms, each selected on the mean dev Spearman over languages (never on test), each tested on every stsb_multi_mt
test language, every xx-en pair and Tatoeba (8 languages, 3 of them never trained on):
- `zero_shot`: multilingual-e5-small as it comes ("query: " prefix, mean pooling);
- `student`: configs/multilingual/student.yaml (strong teacher's pivot scores + embedding KD);
- `gold_only`: configs/multilingual/gold-only.yaml (the same with gold labels in the teacher's place);
- `trimmed`: the student with its vocabulary trimmed (`distill trim`) to en de es fr it nl pl pt, tested there.

Stages already done are reused (the strong teacher and its cache, finished arms in report.json), so an
interrupted run continues where it stopped. Writes runs/multilingual/report.json and report.md.

    nice -n 19 python scripts/multilingual_recipe.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from distill.machine import describe
from distill.recipe import QUIET, Recipe, run_verb, strong_teacher

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "multilingual"
BASE = "configs/multilingual/student.yaml"
TRIM_LANGUAGES = ["en", "de", "es", "fr", "it", "nl", "pl", "pt"]
TATOEBA = ["de", "es", "fr", "ja", "zh", "sv", "tr", "ar"]


def test_metrics(config: list[str], out: Path, extra: list[str], ckpt: str | None = None) -> dict[str, float]:
    argv = ["test", *config, f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", *QUIET, *extra]
    done = run_verb(argv + (["--ckpt_path", ckpt] if ckpt else []))
    return {k: round(float(v), 4) for k, v in done.trainer.callback_metrics.items() if k.startswith("test/")}


def fit_and_test(arm: str, config: list[str], extra: list[str]) -> dict[str, Any]:
    out = OUT / arm
    start = time.perf_counter()
    fit = run_verb(["fit", *config, f"--trainer.default_root_dir={out}",
               f"--trainer.logger.init_args.save_dir={out}", *QUIET, *extra])
    fit_s = time.perf_counter() - start
    cb = fit.trainer.checkpoint_callback
    start = time.perf_counter()
    metrics = test_metrics(config, out, extra, cb.best_model_path)
    return {"dev_spearman": round(float(cb.best_model_score), 4),
            "checkpoint": os.path.relpath(cb.best_model_path, ROOT),
            "fit_s": round(fit_s, 1), "test_s": round(time.perf_counter() - start, 1),
            "train_pairs": len(fit.datamodule.datasets["train"]), "metrics": metrics}


def trim_arm(report: dict[str, Any]) -> dict[str, Any]:
    """Save the student's selected checkpoint as a folder, trim it, test the trimmed folder on its languages."""
    import torch

    from distill.checkpoints import load_model
    from distill.multilingual import texts

    _, student, _ = load_model(ROOT / report["arms"]["student"]["checkpoint"])
    student.eval()
    full = OUT / "student-folder"
    student.save_pretrained(full)
    trimmed = OUT / "student-trimmed"
    start = time.perf_counter()
    trim = run_verb(["trim", "--model", str(full), "--out", str(trimmed), "--languages", json.dumps(TRIM_LANGUAGES),
                         "--overwrite", "true"])
    trim_s = time.perf_counter() - start
    cross = [f"{x}-en" for x in TRIM_LANGUAGES if x != "en"]
    start = time.perf_counter()
    metrics = test_metrics(["--config", BASE], OUT / "trimmed",
                           [f"--model.init_args.student.init_args.backbone={trimmed}",
                            f"--data.init_args.test_languages={json.dumps(TRIM_LANGUAGES)}",
                            f"--data.init_args.test_cross={json.dumps(cross)}",
                            "--trainer.callbacks.init_args.tatoeba=[]"])
    # identical embeddings on text the kept vocabulary covers: the training sentences it was built from
    from students import BiEncoder

    sample = texts(TRIM_LANGUAGES, "train")[::97][:400]
    small = BiEncoder(backbone=str(trimmed), prefix=student.config["prefix"])
    cos = torch.nn.functional.cosine_similarity(student.encode(sample), small.encode(sample))
    return {"trim_s": round(trim_s, 1), "test_s": round(time.perf_counter() - start, 1), "metrics": metrics,
            "trim_report": trim, "covered_min_cosine": round(cos.min().item(), 6), "covered_sentences": len(sample)}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    arms = report["arms"]

    def value(arm: str, key: str) -> float | None:
        return arms.get(arm, {}).get("metrics", {}).get(key)

    non_en = [lang for lang in ("de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")]
    out: dict[str, Any] = {}
    for arm in arms:
        scores = [value(arm, f"test/spearman_cosine/{x}") for x in non_en]
        if all(s is not None for s in scores):
            out[f"{arm}_avg_non_en"] = round(statistics.mean(scores), 4)
        trim_scores = [value(arm, f"test/spearman_cosine/{x}") for x in TRIM_LANGUAGES]
        if all(s is not None for s in trim_scores):
            out[f"{arm}_avg_trim_languages"] = round(statistics.mean(trim_scores), 4)
    student_en = value("student", "test/spearman_cosine/en")
    if "student_avg_non_en" in out:
        targets = {
            "avg_non_en >= zero_shot + 0.03": [out["student_avg_non_en"], out.get("zero_shot_avg_non_en", 0) + 0.03],
            "avg_non_en >= gold_only": [out["student_avg_non_en"], out.get("gold_only_avg_non_en")],
            # the zero-shot arm measured in this run (ANCHORS.md has 0.8397), not a number copied here
            "en >= zero_shot en - 0.005": [student_en, _minus(value("zero_shot", "test/spearman_cosine/en"), 0.005)],
        }
        for pair in ("de-en", "zh-en"):
            cross = value("student", f"test/spearman_cosine/{pair}")
            targets[f"{pair} >= 0.95 x en"] = [cross, round(0.95 * student_en, 4) if student_en else None]
        if "trimmed" in arms:
            t = arms["trimmed"]["trim_report"]
            reduction = t.get("size_bytes", {}).get("reduction") if isinstance(t, dict) else None
            targets["trimmed: disk reduction >= 0.60"] = [reduction, 0.6]
            loss = round(out["student_avg_trim_languages"] - out.get("trimmed_avg_trim_languages", 0), 4)
            targets["trimmed: avg Spearman loss <= 0.005"] = [loss, 0.005]
            targets["trimmed: covered min cosine >= 0.9999"] = [arms["trimmed"]["covered_min_cosine"], 0.9999]
        untrained = [x for x in TATOEBA if x not in report["train_languages"]]
        for lang in untrained:
            for key in (f"{lang}-en", f"en-{lang}"):
                before = value("zero_shot", f"test/tatoeba_acc/{key}")
                after = value("student", f"test/tatoeba_acc/{key}")
                if before is not None and after is not None:
                    targets[f"tatoeba {key} (untrained) drop <= 0.02"] = [round(before - after, 4), 0.02]
        out["targets"] = {k: {"value": v, "bound": b, "met": _met(k, v, b)} for k, (v, b) in targets.items()}
    return out


def _minus(x: float | None, margin: float) -> float | None:
    return None if x is None else round(x - margin, 4)


def _met(name: str, value: float | None, bound: float | None) -> bool | None:
    if value is None or bound is None:
        return None
    return value <= bound if ("<=" in name and "loss" in name or "drop" in name) else value >= bound


def markdown(report: dict[str, Any]) -> str:
    from distill.evaluation import markdown_table

    report["summary"] = summarise(report)
    arms = [a for a in ("zero_shot", "gold_only", "student", "trimmed") if a in report["arms"]]
    sets: dict[str, dict[str, Any]] = {}
    for arm in arms:
        for key, v in report["arms"][arm]["metrics"].items():
            parts = key.split("/")
            if len(parts) == 3 and parts[1] in ("spearman_cosine", "tatoeba_acc"):
                name = f"{'STS' if parts[1] == 'spearman_cosine' else 'Tatoeba'} {parts[2]}"
                sets.setdefault(name, {"set": name})[arm] = v
    order = sorted(sets.values(), key=lambda r: (r["set"].startswith("Tatoeba"), r["set"].count("-"), r["set"]))
    lines = ["# Multilingual students (stsb_multi_mt test Spearman, cosine; Tatoeba accuracy; dev for selection)", "",
             f"Machine: {describe(report['machine'])}. Commands: {report.get('commands', {})}.", "",
             f"Training languages: {report['train_languages']}; settings: {report['settings']}.", "",
             markdown_table(order), "", "## Targets", ""]
    for name, t in report["summary"].get("targets", {}).items():
        verdict = "n/a" if t["met"] is None else "met" if t["met"] else "NOT met"
        lines.append(f"- {name}: {t['value']} vs {t['bound']} — {verdict}")
    lines += ["", "Averages: " + json.dumps({k: v for k, v in report["summary"].items() if k != "targets"}), "",
              "Stages (s): " + json.dumps(report["stages"]), "", *[f"Note: {n}" for n in report.get("notes", [])], ""]
    if "trimmed" in report["arms"]:
        lines += ["Trim: " + json.dumps({k: v for k, v in report["arms"]["trimmed"].items() if k != "metrics"}), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["zero_shot", "student", "gold_only", "trimmed"])
    parser.add_argument("--args", nargs="*", default=[], help="extra CLI arguments for every fit and test")
    parser.add_argument("--out", default=str(OUT), help="where the arms and the report go")
    parser.add_argument("--time_cap_min", type=float, default=None,
                        help="stop before a stage once this many minutes have passed (rerun to continue)")
    args = parser.parse_args()
    OUT = Path(args.out).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    recipe = Recipe(OUT, render=markdown, time_cap_s=args.time_cap_min and args.time_cap_min * 60)
    report = recipe.report
    report.setdefault("arms", {})
    command = "python scripts/multilingual_recipe.py " + " ".join(sys.argv[1:])
    import yaml

    config = yaml.safe_load((ROOT / BASE).read_text())
    report["train_languages"] = config["data"]["init_args"]["languages"]
    report["settings"] = {k: config["data"]["init_args"][k] for k in ("max_source_pairs", "mix_ratio", "max_val_pairs")}
    report["settings"].update(epochs=config["trainer"]["max_epochs"], extra_args=args.args)
    started = time.perf_counter()
    recipe.stage("prepare", lambda: run_verb(["prepare"]), done=False)
    report["teacher_checkpoint"] = os.path.relpath(strong_teacher(recipe), ROOT)
    student_cfg = ["--config", BASE]
    arms = {"zero_shot": lambda: {"metrics": test_metrics(student_cfg, OUT / "zero-shot", args.args)},
            "student": lambda: fit_and_test("student", student_cfg, args.args),
            "gold_only": lambda: fit_and_test("gold-only", [*student_cfg, "--config",
                                                            "configs/multilingual/gold-only.yaml"], args.args),
            "trimmed": lambda: trim_arm(report)}
    for arm in args.arms:
        if arm in report["arms"] or arm not in arms or (arm == "trimmed" and "student" not in report["arms"]):
            continue
        report["arms"][arm] = recipe.stage(arm, arms[arm], done=False)
        report.setdefault("commands", {})[arm] = command  # an interrupted recipe continues under another command
        recipe.save()
    report["stages"]["total_this_run"] = round(time.perf_counter() - started, 1)
    recipe.save()
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()
