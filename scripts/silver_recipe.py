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
import glob
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "silver"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TEACHER_CACHE = ROOT / "runs/strong-teacher/cache"


def cli(argv: list[str]) -> Any:
    from distill.cli import run

    with mock.patch.object(sys, "argv", ["distill"]):
        return run(argv)


def tool(verb: str, argv: list[str]) -> Any:
    """`distill <verb> ...` for the tool verbs, called the way distill.cli does (jsonargparse over main)."""
    import importlib

    import jsonargparse

    main = importlib.import_module(f"distill.{verb}").main
    return jsonargparse.CLI(main, args=argv, as_positional=False)


def best_teacher() -> str | None:
    found = sorted(glob.glob(str(ROOT / "runs/strong-teacher/logs/version_*/checkpoints/best-*.ckpt")))
    return found[-1] if found else None


def complete(cache: Path) -> bool:
    manifest = cache / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("complete", False)


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
    return ["--config", str(ROOT / "configs/student/silver.yaml"), f"--data.init_args.train=[stsb/train, "
            f"{SILVER['pairs']}]", f"--data.init_args.cache_dir=[{TEACHER_CACHE / 'train'}, {SILVER['cache']}]",
            *common]


def train_and_test(arm: str, seed: int, precision: str | None = None) -> dict[str, Any]:
    out = OUT / (f"{arm}-{precision}" if precision else arm) / f"seed{seed}"
    start = time.perf_counter()
    fit = cli(["fit", *arm_args(arm, seed, out, precision)])
    fit_s = time.perf_counter() - start
    cb = fit.trainer.checkpoint_callback
    test = cli(["test", *arm_args(arm, seed, out, precision), "--ckpt_path", cb.best_model_path])
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


def write(report: dict[str, Any]) -> None:
    summarise(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=2))
    lines = ["# Silver pairs from the strong teacher (STS-B test Spearman, dev for selection only)", "",
             f"Machine: {report['machine']}. Command: `{report['command']}`.", "",
             "| arm | seeds | test Spearman per seed | mean | dev per seed |", "|---|---|---|---|---|"]
    for arm, row in report["summary"].items():
        if isinstance(row, dict):
            lines.append(f"| {arm} | {row['seeds']} | {row['test_spearman']} | **{row['test_spearman_mean']}** | "
                         f"{row['dev_spearman']} |")
    deltas = {k: v for k, v in report["summary"].items() if k.startswith("silver_minus")}
    lines += ["", f"Differences of means (same seeds): {deltas}", "",
              "Published for comparison (README, seed 0): spine student 0.8562, gold-only control 0.8559.", ""]
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
    (OUT / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["gold_only", "spine", "silver"])
    parser.add_argument("--precision_check", action="store_true", help="also fit gold_only seed 0 in fp32")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the configs' 2)")
    parser.add_argument("--val_check_interval", type=float, default=None, help="validate within epochs")
    parser.add_argument("--silver_pairs", type=int, default=None,
                        help="train on a seeded random subset of this many mined pairs (less teacher and fit time)")
    args = parser.parse_args()
    if args.epochs:
        EPOCHS.append(f"--trainer.max_epochs={args.epochs}")
    if args.val_check_interval:
        EPOCHS.append(f"--trainer.val_check_interval={args.val_check_interval}")
    # checkpoints are named by epoch: with validation inside an epoch, keep them apart by step
    EPOCHS.append("--trainer.callbacks.init_args.filename=best-{epoch}-{step}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)  # the configs name runs/ relative to the repository
    path = OUT / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {"runs": [], "stages": {}}
    report["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
                        f"torch {__import__('torch').__version__}"
    report["command"] = "nice -n 19 python scripts/silver_recipe.py " + " ".join(sys.argv[1:])
    report["student_args"] = EPOCHS

    def stage(name: str, fn: Any) -> None:
        start = time.perf_counter()
        fn()
        report["stages"][name] = round(time.perf_counter() - start, 1)
        write(report)

    if best_teacher() is None:
        stage("teacher_fit", lambda: cli(["fit", "--config", "configs/teacher/strong.yaml", *QUIET]))
    teacher = best_teacher()
    report["teacher_checkpoint"] = os.path.relpath(teacher, ROOT)
    if not complete(TEACHER_CACHE / "train"):
        stage("cache_train", lambda: tool("cache", ["--config", "configs/cache/strong.yaml", "--ckpt_path", teacher]))
    if not (OUT / "pairs.parquet").is_file():
        stage("mine", lambda: tool("mine", ["--config", "configs/mine/silver.yaml"]))
    if args.silver_pairs:
        import pandas as pd

        SILVER.update(pairs=OUT / f"pairs-{args.silver_pairs}.parquet",
                      cache=TEACHER_CACHE / f"silver-{args.silver_pairs}")
        if not SILVER["pairs"].is_file():
            mined = pd.read_parquet(OUT / "pairs.parquet")
            mined.sample(n=min(args.silver_pairs, len(mined)), random_state=0).sort_index().to_parquet(
                SILVER["pairs"], index=False)
    report["silver_pairs_file"] = os.path.relpath(SILVER["pairs"], ROOT)
    if not complete(SILVER["cache"]):
        stage("cache_silver", lambda: tool("cache", ["--config", "configs/cache/silver.yaml", "--ckpt_path", teacher,
                                                     "--data.init_args.train", str(SILVER["pairs"]),
                                                     "--out", str(SILVER["cache"])]))
    done = {(r["arm"], r["seed"], r["precision"]) for r in report["runs"]}
    todo = [(arm, seed, None) for seed in args.seeds for arm in args.arms]
    if args.precision_check:  # right after the first seed, so a run cut short still has the comparison
        todo.insert(len(args.arms), ("gold_only", args.seeds[0], "32-true"))
    for arm, seed, precision in todo:
        if (arm, seed, precision or "bf16-mixed") in done:
            continue
        result = train_and_test(arm, seed, precision)
        report["runs"].append(result)
        print(f"silver recipe: {arm} seed {seed} {precision or ''}: dev {result['dev_spearman']} "
              f"test {result['test_spearman']} ({result['fit_s']} s)", flush=True)
        write(report)
    if "teacher_test_spearman" not in report:  # last: the students' runs matter more when time is short
        def teacher_test() -> None:
            done = cli(["test", "--config", "configs/teacher/strong.yaml", "--ckpt_path", teacher, *QUIET])
            report["teacher_test_spearman"] = round(float(done.trainer.callback_metrics["test/spearman"]), 4)
        stage("teacher_test", teacher_test)
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()
