"""`distill quickstart`: the whole pipeline on STS-B from the data catalog with offline MiniLM weights.

teacher fit (dev selection) -> teacher test -> cache train scores -> student zero-shot -> gold-only control
-> distilled students for each teacher weight -> the one best on dev -> test -> export of that student
(sentence-transformers folder, ONNX, int8) -> a small speed-versus-accuracy bench -> report.json + report.md.
Every stage runs the same verbs and configs a user runs (`configs/teacher/quickstart.yaml`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from distill import names
from distill.recipe import Recipe, run_verb


def _configs() -> Path:
    """The recipes' `configs/`: beside the package in a checkout or editable install; for `pip install .` (the
    package copied into site-packages) the source folder pip installed from; else the current folder's."""
    from distill.catalog import installed_from

    for root in (Path(__file__).resolve().parents[1], installed_from(), Path.cwd()):
        if root is not None and (root / "configs" / names.TEACHER_QUICKSTART).is_file():
            return root / "configs"
    raise FileNotFoundError("distill quickstart needs the project's configs/ (configs/teacher/quickstart.yaml): run "
                            "it from the distill checkout, or install distill from one")



def _metrics(cli: Any) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items()}


def _alpha_args(alpha: float) -> list[str]:
    # the two named objectives of configs/student/quickstart.yaml, set by their dotted keys
    return [f"--model.init_args.objectives.teacher_mse.init_args.weight={alpha}",
            f"--model.init_args.objectives.gold_mse.init_args.weight={round(1 - alpha, 6)}"]


class _Pipeline:
    """The quickstart's stages over one experiment folder; each runs the verb and config a user runs."""

    def __init__(self, root: Path, smoke: bool, precision: str | None, teacher_epochs: int | None,
                 student_epochs: int | None) -> None:
        self.root, self.smoke = root, smoke
        self.epochs = {"teacher": teacher_epochs, "student": student_epochs}
        self.shrink = ["--data.init_args.max_pairs=200"] if smoke else []
        self.precision = precision
        self.common = [*self.shrink, *([f"--trainer.precision={precision}"] if precision else [])]  # fit and test
        self.teacher_cfg, self.student_cfg = str(_configs() / names.TEACHER_QUICKSTART), \
            str(_configs() / names.STUDENT_QUICKSTART)
        self.student_data = [f"--data.init_args.cache_dir={root / 'cache' / 'train'}"]

    def fit(self, config: str, name: str, epochs: int | None, extra: list[str]) -> tuple[str, float]:
        run_dir = self.root / name
        args = ["fit", "--config", config, f"--trainer.default_root_dir={run_dir}",
                f"--trainer.logger.init_args.save_dir={run_dir}", *self.common, *extra]
        if self.smoke or epochs:
            args.append(f"--trainer.max_epochs={1 if self.smoke else epochs}")
        cb = run_verb(args).trainer.checkpoint_callback
        return cb.best_model_path, round(float(cb.best_model_score), 4)

    def test(self, config: str, ckpt: str | None, extra: list[str]) -> dict[str, float]:
        args = ["test", "--config", config, "--trainer.logger=false", *self.common, *extra]
        return _metrics(run_verb([*args, "--ckpt_path", ckpt] if ckpt else args))

    def teacher(self) -> dict[str, Any]:
        """1. the teacher: fit on train, selected on dev."""
        ckpt, dev = self.fit(self.teacher_cfg, "teacher", self.epochs["teacher"], [])
        return {"checkpoint": ckpt, "dev_spearman": dev}

    def cache(self, teacher_ckpt: str) -> None:
        """2. the teacher's scores of the training pairs (the quickstart owns its folder: --overwrite)."""
        run_verb(["cache", "--config", str(_configs() / names.CACHE_QUICKSTART), "--ckpt_path", teacher_ckpt,
                  "--out", str(self.root / "cache" / "train"), "--overwrite", "true", *self.shrink,
                  *(["--precision", self.precision] if self.precision else [])])

    def students(self, weights: list[float]) -> dict[float, dict[str, Any]]:
        """4. the gold-only control and a distilled student per teacher weight (same student, epochs, seed)."""
        runs = {}
        for alpha in [0.0, *weights]:
            name = "student-gold-only" if alpha == 0 else f"student-alpha{alpha}"
            ckpt, dev = self.fit(self.student_cfg, name, self.epochs["student"], [*self.student_data,
                                                                                 *_alpha_args(alpha)])
            runs[alpha] = {"checkpoint": ckpt, "dev_spearman": dev}
            print(f"[quickstart] {name}: dev spearman {dev}")
        return runs

    def test_students(self, runs: dict[float, dict[str, Any]], weights: list[float]) -> dict[str, Any]:
        """The one best on dev (never on test) and the gold-only control, tested."""
        best = max(weights, key=lambda a: runs[a]["dev_spearman"])
        gold = self.test(self.student_cfg, runs[0.0]["checkpoint"], [*self.student_data, *_alpha_args(0.0)])
        final = self.test(self.student_cfg, runs[best]["checkpoint"], [*self.student_data, *_alpha_args(best)])
        return {"gold_only_test_spearman": gold["test/spearman"],
                "gold_only_dev_spearman": runs[0.0]["dev_spearman"],
                "test_spearman": final["test/spearman"], "test_spearman_cosine": final["test/spearman_cosine"],
                "test_spearman_dse": final.get(f"test/spearman_{names.DSE}"),
                "selected_mode": _selected_mode(runs[best]["checkpoint"]), "teacher_weight": best,
                **{f"dev_spearman_teacher_weight_{a}": runs[a]["dev_spearman"] for a in weights},
                "checkpoint": runs[best]["checkpoint"]}

    def export(self, ckpt: str) -> str:
        """5. ship it: the selected student as a sentence-transformers folder with ONNX fp32 and int8."""
        folder = self.root / "export" / "student"
        run_verb(["export", "--ckpt", ckpt, "--out", str(folder), "--onnx", "true", "--int8", "true",
                  "--overwrite", "true"])
        return str(folder)

    def bench(self, teacher_ckpt: str, export_dir: str) -> dict[str, Any]:
        """6. what it buys: teacher vs student, both regimes, sentence-transformers on the same weights beside."""
        small = (["--max_pairs", "60", "--n_candidates", "[10, 100]", "--queries", "4", "--teacher_queries", "2",
                  "--repeats", "2", "--chunk_pairs", "30", "--peers", "[all-MiniLM-L6-v2]"] if self.smoke else [])
        out = self.root / "bench"
        bench = run_verb(["bench", "--config", str(_configs() / names.BENCH_QUICKSTART), "--teacher", teacher_ckpt,
                          "--students", f"[{export_dir}]", "--out", str(out), *small])
        keep = ("median", "spread", "verdict", "target", "target_verdict", "recall_at_10", "spearman_delta",
                "flop_ratio")
        return {"report": str(out / names.REPORT_JSON),
                "ratios": {q["name"]: {k: q[k] for k in keep if k in q} for q in bench["ratios"]}}


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
    root = Path(out or ("runs/quickstart-smoke" if smoke else "runs/quickstart"))
    weights = teacher_weights or ([0.5] if smoke else [0.5, 1.0])
    if any(w <= 0 or w > 1 for w in weights):
        raise ValueError(f"teacher_weights {weights}: each must be in (0, 1]; 0 is the gold-only control")
    steps = _Pipeline(root, smoke, precision, teacher_epochs, student_epochs)
    # the quickstart reruns every stage (each verb overwrites its folder): a fresh report, no resume
    recipe = Recipe(root, resume=False)
    report = recipe.report
    report.update(teacher={}, student={}, smoke=smoke)
    teacher = recipe.stage("teacher_fit", steps.teacher)
    report["teacher"].update(teacher)
    report["teacher"]["test_spearman"] = recipe.stage(
        "teacher_test", lambda: steps.test(steps.teacher_cfg, teacher["checkpoint"], [])["test/spearman"])
    recipe.stage("cache", lambda: steps.cache(teacher["checkpoint"]))
    # 3. the student backbone as it is (cosine; the DSE head is untrained)
    report["student"]["zero_shot_test_spearman"] = recipe.stage(
        "zero_shot", lambda: steps.test(steps.student_cfg, None, steps.student_data)["test/spearman_cosine"])
    runs = recipe.stage("student_fits", lambda: steps.students(weights))
    report["student"].update(recipe.stage("student_test", lambda: steps.test_students(runs, weights)))
    report["student"]["export"] = recipe.stage("export", lambda: steps.export(report["student"]["checkpoint"]))
    report["bench"] = recipe.stage("bench", lambda: steps.bench(teacher["checkpoint"], report["student"]["export"]))
    report["wall_time_s"] = round(recipe.elapsed_s, 1)
    recipe.render = render_markdown
    recipe.save()
    print((root / names.REPORT_MD).read_text())
    return report


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
