"""bf16-mixed versus fp32 on one bounded student fit: does the precision change the result, and what does it cost?

The quickstart student, gold labels only (teacher weight 0, no cache needed), seed 0, the first 2,000 STS-B train
pairs, 1 epoch; one fit per precision, then `distill test` on the selected checkpoint. Run it on a quiet machine:
the fit times are the point. Resumable (a finished precision is kept); writes `runs/precision/report.json` and
`report.md` (copied to `docs/precision-report.md`).

    python scripts/precision_check.py            # ~10 min on 2 quiet cores
    python scripts/precision_check.py --smoke    # 100 pairs, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("bf16-mixed", "32-true")


def _cli(argv: list[str]):  # noqa: ANN202 - LightningCLI
    from distill.cli import run

    with mock.patch.object(sys, "argv", ["distill"]):
        return run(argv)


def _fit_and_test(out: Path, precision: str, max_pairs: int) -> dict:
    folder = out / precision
    args = ["--config", "configs/student/quickstart.yaml", "--data.init_args.cache_dir=null",
            f"--data.init_args.max_pairs={max_pairs}", "--trainer.max_epochs=1", f"--trainer.precision={precision}",
            "--model.init_args.objectives.teacher_mse.init_args.weight=0",
            "--model.init_args.objectives.gold_mse.init_args.weight=1", "--seed_everything=0",
            f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
            "--trainer.enable_progress_bar=false"]
    shutil.rmtree(folder, ignore_errors=True)  # a killed fit restarts whole: only finished ones are kept
    start = time.perf_counter()
    fit = _cli(["fit", *args])
    fit_s = time.perf_counter() - start
    best = fit.trainer.checkpoint_callback.best_model_path
    test = _cli(["test", *args, "--ckpt_path", best])
    metrics = test.trainer.callback_metrics
    return {"precision": precision, "fit_s": round(fit_s, 1),
            "dev_spearman": round(float(fit.trainer.checkpoint_callback.best_model_score), 4),
            "test_spearman": round(float(metrics["test/spearman"]), 4),
            "test_spearman_cosine": round(float(metrics.get("test/spearman_cosine", float("nan"))), 4)}


def _markdown(report: dict) -> str:
    lines = ["# bf16-mixed versus fp32 (one bounded student fit)", "",
             f"{report['date']}; {report['machine']}; command: `{report['command']}`.", "",
             f"Quickstart student (MiniLM-L6, DSE head), gold labels only, seed 0, first {report['max_pairs']} STS-B "
             "train pairs, 1 epoch; dev selects, test reported.", "",
             "| precision | fit (s) | dev Spearman | test Spearman | test Spearman (cosine) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['precision']} | {r['fit_s']} | {r['dev_spearman']} | {r['test_spearman']} | "
              f"{r['test_spearman_cosine']} |" for r in report["runs"]]
    if len(report["runs"]) == 2:
        a, b = report["runs"]
        lines += ["", f"Test Spearman difference {a['test_spearman'] - b['test_spearman']:+.4f}; fit time ratio "
                      f"fp32 / bf16 {b['fit_s'] / a['fit_s']:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="100 pairs (CI)")
    parser.add_argument("--out", default="runs/precision")
    parser.add_argument("--max_pairs", type=int, default=2000)
    parser.add_argument("--time_cap_s", type=float, default=1800, help="stop starting new fits after this long")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)  # the configs name their data and runs relative to the repository
    max_pairs = 100 if args.smoke else args.max_pairs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    if report.get("max_pairs") not in (None, max_pairs):
        report = {"runs": []}  # another size: nothing to resume
    import torch

    report.update(max_pairs=max_pairs, date=time.strftime("%Y-%m-%d"), command="python scripts/precision_check.py "
                  + " ".join(sys.argv[1:]), machine=f"{platform.machine()}, {os.cpu_count()} cores, torch "
                  f"{torch.__version__}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    for precision in PRECISIONS:
        if any(r["precision"] == precision for r in report["runs"]):
            continue
        if time.perf_counter() - started > args.time_cap_s:
            print(f"precision check: time cap reached before {precision}; rerun to continue")
            break
        report["runs"].append(_fit_and_test(out, precision, max_pairs))
        path.write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    if not args.smoke:
        (ROOT / "docs" / "precision-report.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
