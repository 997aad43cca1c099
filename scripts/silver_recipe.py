"""The silver-pair benchmark (issue 4): does a strong teacher pay off on pairs nobody labelled?

Arms, each trained with the same seeds, selected on STS-B dev, reported on STS-B test (never tuned on test):
- `gold_only`: the quickstart student on STS-B train gold labels (teacher weight 0);
- `spine`: the spine's recipe with the strong teacher: teacher scores (0.5) + gold (0.5) on STS-B train;
- `silver`: the same objectives on STS-B train + silver pairs mined from the *train* sentences by the zero-shot
  student and scored by the strong teacher (AugSBERT); the gold term skips the unlabelled silver rows.

Stages already done are reused (teacher checkpoint, caches, mined pairs, finished runs in report.json), so an
interrupted run continues where it stopped. Writes runs/silver/report.json and runs/silver/report.md.

    nice -n 19 python scripts/silver_recipe.py --seeds 0 1 2
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
from distill.recipe import (
    QUIET,
    STRONG_CACHE,
    STRONG_RUN,
    STRONG_TEACHER,
    Recipe,
    cache_complete,
    run_verb,
    strong_teacher,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "silver"
TEACHER_CACHE = ROOT / STRONG_RUN / "cache"


EPOCHS: list[str] = []  # set from --epochs / --val_check_interval in main()
SILVER: dict[str, Path] = {"pairs": OUT / "pairs.parquet", "cache": TEACHER_CACHE / "silver"}  # --silver_pairs


def arm_args(arm: str, seed: int, out: Path, precision: str | None) -> list[str]:
    common = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}", f"--trainer.default_root_dir={out}",
              f"--trainer.logger.init_args.save_dir={out}", *EPOCHS, *QUIET]
    if precision:
        common.append(f"--trainer.precision={precision}")
    if arm == "gold_only":
        return ["--config", str(ROOT / "configs/student/quickstart.yaml"), "--data.init_args.cache_dir=null",
                "--model.init_args.objectives.teacher_mse.init_args.weight=0",
                "--model.init_args.objectives.gold_mse.init_args.weight=1", *common]
    if arm == "spine":
        return ["--config", str(ROOT / "configs/student/quickstart.yaml"),
                f"--data.init_args.cache_dir={TEACHER_CACHE / 'train'}", *common]
    return ["--config", str(ROOT / "configs/student/quickstart.yaml"), "--config",
            str(ROOT / "configs/student/silver.yaml"), f"--data.init_args.train=[stsb/train, "
            f"{SILVER['pairs']}]", f"--data.init_args.cache_dir=[{TEACHER_CACHE / 'train'}, {SILVER['cache']}]",
            *common]


def train_and_test(arm: str, seed: int, precision: str | None = None) -> dict[str, Any]:
    out = OUT / (f"{arm}-{precision}" if precision else arm) / f"seed{seed}"
    start = time.perf_counter()
    fit = run_verb(["fit", *arm_args(arm, seed, out, precision)])
    fit_s = time.perf_counter() - start
    cb = fit.trainer.checkpoint_callback
    test = run_verb(["test", *arm_args(arm, seed, out, precision), "--ckpt_path", cb.best_model_path])
    metrics = {k: round(float(v), 4) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    return {"arm": arm, "seed": seed, "precision": precision or "bf16-mixed",
            "dev_spearman": round(float(cb.best_model_score), 4), "test_spearman": metrics["test/spearman"],
            "test_metrics": metrics, "checkpoint": os.path.relpath(cb.best_model_path, ROOT),
            "fit_s": round(fit_s, 1), "train_pairs": len(fit.datamodule.datasets["train"])}


def summarise(report: dict[str, Any]) -> None:
    runs = [r for r in report["runs"] if r["precision"] == "bf16-mixed"]
    table = {}
    for arm in ("gold_only", "spine", "silver"):
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if mine:
            tests = [r["test_spearman"] for r in mine]
            table[arm] = {"seeds": [r["seed"] for r in mine], "test_spearman": tests,
                          "dev_spearman": [r["dev_spearman"] for r in mine],
                          "test_spearman_mean": round(statistics.mean(tests), 4),
                          "test_spearman_std": round(statistics.stdev(tests), 4) if len(tests) > 1 else None}
    report["summary"] = table
    if "silver" in table:
        s = table["silver"]
        seeds = set(s["seeds"])
        for base in ("gold_only", "spine"):
            if base in table and set(table[base]["seeds"]) >= seeds:
                paired = [t for t, sd in zip(table[base]["test_spearman"], table[base]["seeds"]) if sd in seeds]
                report["summary"][f"silver_minus_{base}"] = round(s["test_spearman_mean"] - statistics.mean(paired),
                                                                   4)


def markdown(report: dict[str, Any]) -> str:
    summarise(report)
    lines = ["# Silver pairs from the strong teacher (STS-B test Spearman, dev for selection only)", "",
             f"Machine: {describe(report['machine'])}. Command: `{report['command']}`.", "",
             "| arm | seeds | test Spearman per seed | mean | dev per seed |", "|---|---|---|---|---|"]
    for arm, row in report["summary"].items():
        if isinstance(row, dict):
            lines.append(f"| {arm} | {row['seeds']} | {row['test_spearman']} | **{row['test_spearman_mean']}** | "
                         f"{row['dev_spearman']} |")
    deltas = {k: v for k, v in report["summary"].items() if k.startswith("silver_minus")}
    lines += ["", f"Differences of means (same seeds): {deltas}", ""]
    extra = [r for r in report["runs"] if r["precision"] != "bf16-mixed"]
    if extra:
        lines += ["Precision check (same arm and seed):", ""]
        for r in extra:
            twin = next((b for b in report["runs"] if b["precision"] == "bf16-mixed" and b["arm"] == r["arm"]
                         and b["seed"] == r["seed"]), None)
            lines.append(f"- {r['arm']} seed {r['seed']}: {r['precision']} test {r['test_spearman']} "
                         f"(fit {r['fit_s']} s) vs bf16-mixed {twin and twin['test_spearman']} "
                         f"(fit {twin and twin['fit_s']} s)")
    lines += ["", f"Teacher: {report.get('teacher_checkpoint')}, STS-B test Spearman "
                  f"{report.get('teacher_test_spearman', 'not measured yet')}.",
              "", "Stages (s): " + json.dumps(report["stages"])]
    return "\n".join(lines) + "\n"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["gold_only", "spine", "silver"])
    parser.add_argument("--precision_check", action="store_true", help="also fit gold_only seed 0 in fp32")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the configs' 2)")
    parser.add_argument("--val_check_interval", type=float, default=None, help="validate within epochs")
    parser.add_argument("--silver_pairs", type=int, default=None,
                        help="train on a seeded random subset of this many mined pairs (less teacher and fit time)")
    parser.add_argument("--time_cap_min", type=float, default=None,
                        help="stop before a stage once this many minutes have passed (rerun to continue)")
    args = parser.parse_args()
    if args.epochs:
        EPOCHS.append(f"--trainer.max_epochs={args.epochs}")
    if args.val_check_interval:
        EPOCHS.append(f"--trainer.val_check_interval={args.val_check_interval}")
    # checkpoints are named by epoch: with validation inside an epoch, keep them apart by step
    EPOCHS.append("--trainer.callbacks.init_args.filename=best-{epoch}-{step}")
    return args


def silver_pairs(recipe: Recipe, teacher: str, subset: int | None) -> None:
    """Mine the silver pairs (once), optionally take a seeded subset, and cache the teacher's scores of them."""
    recipe.stage("mine", lambda: run_verb(["mine", "--config", "configs/mine/silver.yaml"]),
                 done=(OUT / "pairs.parquet").is_file())
    if subset:
        import pandas as pd

        SILVER.update(pairs=OUT / f"pairs-{subset}.parquet", cache=TEACHER_CACHE / f"silver-{subset}")
        if not SILVER["pairs"].is_file():
            mined = pd.read_parquet(OUT / "pairs.parquet")
            mined.sample(n=min(subset, len(mined)), random_state=0).sort_index().to_parquet(SILVER["pairs"],
                                                                                          index=False)
    recipe.report["silver_pairs_file"] = os.path.relpath(SILVER["pairs"], ROOT)
    recipe.stage("cache_silver", lambda: run_verb([
        "cache", *STRONG_CACHE, "--config", "configs/cache/silver.yaml", "--ckpt_path", teacher,
        "--data.init_args.train", str(SILVER["pairs"]), "--out", str(SILVER["cache"])]),
        done=cache_complete(SILVER["cache"]))


def main() -> None:
    args = _parse()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)  # the configs name runs/ relative to the repository
    recipe = Recipe(OUT, render=markdown, time_cap_s=args.time_cap_min and args.time_cap_min * 60)
    report = recipe.report
    report.setdefault("runs", [])
    report["command"] = "nice -n 19 python scripts/silver_recipe.py " + " ".join(sys.argv[1:])
    report["student_args"] = EPOCHS
    teacher = strong_teacher(recipe)
    report["teacher_checkpoint"] = os.path.relpath(teacher, ROOT)
    silver_pairs(recipe, teacher, args.silver_pairs)
    done = {(r["arm"], r["seed"], r["precision"]) for r in report["runs"]}
    todo = [(arm, seed, None) for seed in args.seeds for arm in args.arms]
    if args.precision_check:  # right after the first seed, so a run cut short still has the comparison
        todo.insert(len(args.arms), ("gold_only", args.seeds[0], "32-true"))
    for arm, seed, precision in todo:
        if (arm, seed, precision or "bf16-mixed") not in done:
            result = train_and_test(arm, seed, precision)
            report["runs"].append(result)
            print(f"silver recipe: {arm} seed {seed} {precision or ''}: dev {result['dev_spearman']} "
                  f"test {result['test_spearman']} ({result['fit_s']} s)", flush=True)
            recipe.save()

    def teacher_test() -> None:  # last: the students' runs matter more when time is short
        done = run_verb(["test", *STRONG_TEACHER, "--ckpt_path", teacher, *QUIET])
        report["teacher_test_spearman"] = round(float(done.trainer.callback_metrics["test/spearman"]), 4)
    recipe.stage("teacher_test", teacher_test, done="teacher_test_spearman" in report)
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()
