"""Evaluation in file order or longest first: the time of one `distill test` and its figures, side by side.

Runs the same `distill test` (default: multilingual-e5-small zero-shot on the stsb_multi_mt STS sets, 11 languages
and 10 xx-en, `configs/alignment/student.yaml` + `test-sts.yaml`) with `data.init_args.group_by_length` true
(validation and test batches longest first, `distill.data.LengthSortedSampler`) and false (file order), in
interleaved rounds after one untimed warm-up run (tokenising, the data's Arrow cache, the model's first load), and
reports each order's median time, its spread, the tokens its test batches hold (padding included), and the largest
difference between the two orders' test figures (ordering must not change them beyond float noise).

    python scripts/eval_order.py                 # 2 rounds, 500 pairs per set: about 8 min on 2 cores
    # writes runs/eval-order/report.{json,md}; with the default --out, docs/eval-order-report.md is its copy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.evaluation import markdown_table  # noqa: E402
from distill.machine import describe, machine  # noqa: E402
from distill.recipe import QUIET, run_verb  # noqa: E402

DEFAULT_OUT = Path("runs/eval-order")
CONFIG = ["--config", "configs/alignment/student.yaml", "--config", "configs/alignment/test-sts.yaml"]
ORDERS = {"longest first": "true", "file order": "false"}


def batch_tokens(datamodule: Any) -> int:
    """Tokens the test loader's batches hold, padding included (both sides of every pair; the module's memo may
    skip a text seen before, so this is what the batches carry, not exactly what is encoded)."""
    return sum(batch[k].numel() for batch in datamodule.test_dataloader() for k in ("a_input_ids", "b_input_ids"))


def one_test(out: Path, order: str, pairs: int) -> dict[str, Any]:
    start = time.perf_counter()
    done = run_verb(["test", *CONFIG, f"--data.init_args.group_by_length={ORDERS[order]}",
                     f"--data.init_args.max_test_pairs={pairs}", f"--trainer.default_root_dir={out / 'runs'}",
                     f"--trainer.logger.init_args.save_dir={out / 'runs'}", *QUIET])
    seconds = time.perf_counter() - start
    figures = {k: float(v) for k, v in done.trainer.callback_metrics.items() if k.startswith("test/spearman")}
    return {"seconds": seconds, "figures": figures, "batch_tokens": batch_tokens(done.datamodule),
            "pairs": len(done.datamodule.datasets["test"])}


def markdown(report: dict[str, Any]) -> str:
    rows = [{"order": order, "median s": r["median_s"], "min-max s": f"{r['min_s']}-{r['max_s']}",
             "tokens in batches": r["batch_tokens"], "test/spearman": r["spearman"]}
            for order, r in report["orders"].items()]
    return "\n".join([
        "# Evaluation order: file order or longest first (one `distill test`, side by side)", "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. {report['pairs']} test pairs "
        f"({report['pairs_per_set']} per set, {report['sets']} sets), {report['rounds']} interleaved rounds.", "",
        markdown_table(rows), "",
        f"- time, file order / longest first: **{report['speedup']}x** (per round {report['speedup_min']}-"
        f"{report['speedup_max']})",
        f"- largest difference between the two orders' test figures: {report['max_figure_difference']:.2e} "
        f"({report['n_figures']} figures)", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs both orders)")
    parser.add_argument("--pairs", type=int, default=500, help="test pairs per set (the same rows in each set)")
    args = parser.parse_args()
    default_out = args.out == DEFAULT_OUT
    # the default lives in the repository's runs/; a given --out is relative to where the command was run
    args.out = ROOT / DEFAULT_OUT if default_out else args.out.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    one_test(args.out, "file order", args.pairs)  # warm-up: the first run alone would pay the one-off costs
    results: dict[str, list[dict[str, Any]]] = {order: [] for order in ORDERS}
    for i in range(args.rounds):
        # alternate which order goes first, so a drift in machine speed does not favour one
        for order in (ORDERS if i % 2 == 0 else reversed(list(ORDERS))):
            results[order].append(one_test(args.out, order, args.pairs))
            print(f"round {i + 1}/{args.rounds}, {order}: {results[order][-1]['seconds']:.1f} s", flush=True)
    first, plain = results["longest first"], results["file order"]
    ratios = [p["seconds"] / f["seconds"] for f, p in zip(first, plain)]
    figures, other = first[0]["figures"], plain[0]["figures"]
    if not figures or figures.keys() != other.keys():
        raise SystemExit(f"eval_order: the two orders logged different figures: {sorted(figures)} vs {sorted(other)}")
    bad = sorted(k for run in (figures, other) for k, v in run.items() if not math.isfinite(v))
    if bad:
        raise SystemExit(f"eval_order: non-finite test figures {bad}: the model or the data is broken, no timing kept")
    report = {
        "machine": describe(machine()), "command": " ".join(["python scripts/eval_order.py", *sys.argv[1:]]),
        "rounds": args.rounds, "pairs": first[0]["pairs"], "pairs_per_set": args.pairs,
        "sets": sum(1 for k in figures if k.count("/") == 2 and k.startswith("test/spearman_cosine/")),
        "orders": {order: {"median_s": round(statistics.median(r["seconds"] for r in runs), 1),
                           "min_s": round(min(r["seconds"] for r in runs), 1),
                           "max_s": round(max(r["seconds"] for r in runs), 1),
                           "batch_tokens": runs[0]["batch_tokens"],
                           "spearman": round(runs[0]["figures"]["test/spearman"], 4)}
                   for order, runs in results.items()},
        "speedup": round(statistics.median(ratios), 2), "speedup_min": round(min(ratios), 2),
        "speedup_max": round(max(ratios), 2), "n_figures": len(figures),
        "max_figure_difference": max(abs(figures[k] - other[k]) for k in figures),
        "rounds_s": {order: [round(r["seconds"], 1) for r in runs] for order, runs in results.items()},
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(markdown(report))
    if default_out:
        shutil.copy(args.out / "report.md", ROOT / "docs" / "eval-order-report.md")
    print(markdown(report))


if __name__ == "__main__":
    main()
