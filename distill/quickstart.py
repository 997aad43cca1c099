"""`distill quickstart`: the whole pipeline on STS-B from the data catalog with offline MiniLM weights.

teacher fit (dev selection) -> teacher test -> cache train scores -> student zero-shot -> gold-only control
-> distilled students for each teacher weight -> the one best on dev -> test -> export of that student
(sentence-transformers folder, ONNX, int8) -> a small speed-versus-accuracy bench -> report.json + report.md.
Every stage runs the same verbs and configs a user runs (`configs/teacher/quickstart.yaml`, ...).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch


def _configs() -> Path:
    """The recipes' `configs/`: beside the package in a checkout or editable install; for `pip install .` (the
    package copied into site-packages) the source folder pip installed from; else the current folder's."""
    from distill.catalog import installed_from

    for root in (Path(__file__).resolve().parents[1], installed_from(), Path.cwd()):
        if root is not None and (root / "configs" / "teacher" / "quickstart.yaml").is_file():
            return root / "configs"
    raise FileNotFoundError("distill quickstart needs the project's configs/ (configs/teacher/quickstart.yaml): run "
                            "it from the distill checkout, or install distill from one")



def _cli(argv: list[str]) -> Any:
    from distill.cli import run  # the CLI imports this module

    # LightningCLI warns when given args while sys.argv holds `quickstart ...`; the args are the whole command
    with mock.patch.object(sys, "argv", ["distill"]):
        return run(argv)


def _metrics(cli: Any) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items()}


def _alpha_args(alpha: float) -> list[str]:
    # the two named objectives of configs/student/quickstart.yaml, set by their dotted keys
    return [f"--model.init_args.objectives.teacher_mse.init_args.weight={alpha}",
            f"--model.init_args.objectives.gold_mse.init_args.weight={round(1 - alpha, 6)}"]


def main(
    smoke: bool = False,
    out: str | None = None,
    teacher_weights: list[float] | None = None,
    teacher_epochs: int | None = None,
    student_epochs: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline on catalog data (teacher, cache, students, report).

    Args:
        smoke: the same code path shrunk (200 pairs, 1 epoch, small eval splits), about 2 minutes.
        out: the experiment folder (`report.json`, `report.md`, checkpoints, cache); default
            `runs/quickstart` (`runs/quickstart-smoke` with --smoke).
        teacher_weights: candidate teacher weights alpha > 0 (gold weight 1 - alpha), chosen on dev.
        teacher_epochs: override the teacher config's epochs.
        student_epochs: override the student config's epochs.
        precision: override the configs' training precision (they use `bf16-mixed`; `32-true` for fp32).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is offline; never reach for a hub
    start = time.perf_counter()
    root = Path(out or ("runs/quickstart-smoke" if smoke else "runs/quickstart"))
    weights = teacher_weights or ([0.5] if smoke else [0.5, 1.0])
    if any(w <= 0 or w > 1 for w in weights):
        raise ValueError(f"teacher_weights {weights}: each must be in (0, 1]; 0 is the gold-only control")
    shrink = ["--data.init_args.max_pairs=200"] if smoke else []
    common = [*shrink, *([f"--trainer.precision={precision}"] if precision else [])]  # fit and test
    teacher_cfg, student_cfg = str(_configs() / "teacher/quickstart.yaml"), str(_configs() / "student/quickstart.yaml")
    stages: dict[str, float] = {}
    report: dict[str, Any] = {"teacher": {}, "student": {}, "smoke": smoke}

    def stage(name: str) -> None:
        stages[name] = round(time.perf_counter() - start - sum(stages.values()), 1)
        print(f"[quickstart] {name}: {stages[name]} s")

    def fit(config: str, name: str, epochs: int | None, extra: list[str]) -> tuple[str, float]:
        run_dir = root / name
        args = ["fit", "--config", config, f"--trainer.default_root_dir={run_dir}",
                f"--trainer.logger.init_args.save_dir={run_dir}", *common, *extra]
        if smoke or epochs:
            args.append(f"--trainer.max_epochs={1 if smoke else epochs}")
        cb = _cli(args).trainer.checkpoint_callback
        return cb.best_model_path, round(float(cb.best_model_score), 4)

    def test(config: str, ckpt: str | None, extra: list[str]) -> dict[str, float]:
        args = ["test", "--config", config, "--trainer.logger=false", *common, *extra]
        return _metrics(_cli([*args, "--ckpt_path", ckpt] if ckpt else args))

    # 1. teacher: fit on train, selected on dev
    teacher_ckpt, teacher_dev = fit(teacher_cfg, "teacher", teacher_epochs, [])
    stage("teacher_fit")
    report["teacher"].update(checkpoint=teacher_ckpt, dev_spearman=teacher_dev,
                             test_spearman=test(teacher_cfg, teacher_ckpt, [])["test/spearman"])
    stage("teacher_test")

    # 2. teacher scores for the training pairs
    cache_dir = root / "cache" / "train"
    _cli(["cache", "--config", str(_configs() / "cache/quickstart.yaml"), "--ckpt_path", teacher_ckpt,
          "--out", str(cache_dir), "--overwrite", "true", *shrink,  # the quickstart owns its folder
          *(["--precision", precision] if precision else [])])
    student_data = [f"--data.init_args.cache_dir={cache_dir}"]
    stage("cache")

    # 3. the student backbone as it is (cosine; the DSE head is untrained)
    zero = test(student_cfg, None, student_data)
    report["student"]["zero_shot_test_spearman"] = zero["test/spearman_cosine"]
    stage("zero_shot")

    # 4. gold-only control and distilled students (same student, epochs, seed)
    runs = {}
    for alpha in [0.0, *weights]:
        name = "student-gold-only" if alpha == 0 else f"student-alpha{alpha}"
        ckpt, dev = fit(student_cfg, name, student_epochs, [*student_data, *_alpha_args(alpha)])
        runs[alpha] = {"checkpoint": ckpt, "dev_spearman": dev}
        print(f"[quickstart] {name}: dev spearman {dev}")
    stage("student_fits")
    best = max(weights, key=lambda a: runs[a]["dev_spearman"])  # chosen on dev, never on test
    gold = test(student_cfg, runs[0.0]["checkpoint"], [*student_data, *_alpha_args(0.0)])
    final = test(student_cfg, runs[best]["checkpoint"], [*student_data, *_alpha_args(best)])
    selected = _selected_mode(runs[best]["checkpoint"])
    report["student"].update(
        gold_only_test_spearman=gold["test/spearman"],
        gold_only_dev_spearman=runs[0.0]["dev_spearman"],
        test_spearman=final["test/spearman"],
        test_spearman_cosine=final["test/spearman_cosine"],
        test_spearman_dse=final.get("test/spearman_dse"),
        selected_mode=selected,
        teacher_weight=best,
        **{f"dev_spearman_teacher_weight_{a}": runs[a]["dev_spearman"] for a in weights},
        checkpoint=runs[best]["checkpoint"],
    )
    stage("student_test")

    # 5. ship it: the selected student as a sentence-transformers folder with ONNX fp32 and int8
    export_dir = root / "export" / "student"
    _cli(["export", "--ckpt", runs[best]["checkpoint"], "--out", str(export_dir), "--onnx", "true", "--int8", "true",
          "--overwrite", "true"])
    report["student"]["export"] = str(export_dir)
    stage("export")

    # 6. what it buys: teacher vs student, both regimes, with sentence-transformers baselines on the same weights
    small = (["--max_pairs", "60", "--n_candidates", "[10, 100]", "--queries", "2", "--repeats", "2",
              "--chunk_pairs", "30"] if smoke else [])
    bench = _cli(["bench", "--config", str(_configs() / "bench/quickstart.yaml"), "--teacher", teacher_ckpt,
                  "--students", f"[{export_dir}]", "--out", str(root / "bench"), *small])
    report["bench"] = {"report": str(root / "bench" / "report.json"),
                       "ratios": {q["name"]: {k: q[k] for k in ("median", "spread", "verdict")} | (
                           {"recall_at_10": q["recall_at_10"]} if "recall_at_10" in q else {}) | (
                           {"spearman_delta": q["spearman_delta"]} if "spearman_delta" in q else {})
                                  for q in bench["ratios"]}}
    stage("bench")
    report["stages"] = stages
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    report["machine"] = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "date": time.strftime("%Y-%m-%d")}
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(json.dumps(report, indent=2))
    (root / "report.md").write_text(render_markdown(report))
    print((root / "report.md").read_text())
    return report


def cpu_name() -> str:
    """The CPU's model name (for reports)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _selected_mode(ckpt: str) -> str:
    return torch.load(ckpt, map_location="cpu", weights_only=True).get("selected_mode", "cosine")


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: one table of STS-B test Spearman, then the stage times."""
    t, s = report["teacher"], report["student"]
    rows = [
        ("teacher (cross-encoder)", t["dev_spearman"], t["test_spearman"], ""),
        ("student backbone, zero-shot (cosine)", "", s["zero_shot_test_spearman"], ""),
        ("gold-only control (teacher weight 0)", s["gold_only_dev_spearman"], s["gold_only_test_spearman"], ""),
        (f"distilled student (teacher weight {s['teacher_weight']}, {s['selected_mode']})",
         s[f"dev_spearman_teacher_weight_{s['teacher_weight']}"], s["test_spearman"], "selected on dev"),
        ("  same student, cosine", "", s["test_spearman_cosine"], ""),
        ("  same student, DSE head", "", s["test_spearman_dse"], ""),
    ]
    lines = ["# distill quickstart" + (" (smoke)" if report["smoke"] else ""), "",
             "| model | dev Spearman | test Spearman | note |", "|---|---|---|---|"]
    lines += [f"| {name} | {dev} | {test} | {note} |" for name, dev, test, note in rows]
    tried = {k.rsplit("_", 1)[1]: v for k, v in s.items() if k.startswith("dev_spearman_teacher_weight_")}
    lines += ["", f"Teacher weights tried (dev Spearman): {tried}", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["stages"].items()]
    lines += [f"| **total** | {report['wall_time_s']} |", ""]
    if report.get("bench"):
        lines += ["## Speed (distill bench; full table in bench/report.md, plot in bench/pareto.png)", "",
                  "| ratio | median | spread | verdict |", "|---|---|---|---|"]
        lines += [f"| {name} | {q['median']}× | {q['spread'][0]}–{q['spread'][1]} | {q['verdict']} |"
                  for name, q in report["bench"]["ratios"].items()]
        lines += ["", f"Exported student: `{report['student']['export']}`", ""]
    return "\n".join(lines)
