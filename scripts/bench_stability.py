"""Do the bench's verdicts hold? The quickstart's bench, run three times on the same artefacts, side by side.

Runs `distill bench --config configs/bench/quickstart.yaml` on one teacher and one student (checkpoints of a
quickstart; each run exports them afresh) `--runs` times, one after another on a quiet machine, and writes each
run's report plus a table of every ratio's median, spread and verdicts per run, and whether they agree.
Writes runs/bench-stability/{run1,run2,...}/report.json, runs/bench-stability/report.json and
docs/bench-stability.md.

    python scripts/bench_stability.py --teacher runs/quickstart/teacher/.../best-epoch=2.ckpt \\
        --student runs/quickstart/student-alpha0.5/.../best-epoch=1.ckpt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distill.machine import describe, machine
from distill.recipe import Recipe, best_checkpoint, run_verb, write_atomic

ROOT = Path(__file__).resolve().parents[1]


def markdown(report: dict[str, Any]) -> str:
    runs = report.get("runs", {})
    names = list(dict.fromkeys(q["name"] for r in runs.values() for q in r["ratios"]))
    lines = ["# Bench verdicts, run after run", "",
             f"Machine: {describe(report['machine'])}. Command: `{report.get('command', '')}`. Each run: "
             f"`distill bench --config configs/bench/quickstart.yaml` on the same teacher and student; seconds per "
             f"run: {[r['seconds'] for r in runs.values()]}.", "",
             "| ratio | " + " | ".join(f"run {k}: median [spread] verdict / target" for k in runs) + " | same |",
             "|---|" + "---|" * (len(runs) + 1)]
    for name in names:
        cells, verdicts = [], set()
        for r in runs.values():
            q = next((q for q in r["ratios"] if q["name"] == name), None)
            if q is None:
                cells.append("-")
                continue
            target = f" / {q['target_verdict']} (target {q['target']})" if "target" in q else ""
            cells.append(f"{q['median']}× [{q['spread'][0]}–{q['spread'][1]}] {q['verdict']}{target}")
            verdicts.add((q["verdict"], q.get("target_verdict")))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if len(verdicts) == 1 else 'NO'} |")
    floors = [(k, row) for k, r in runs.items() for row in r["rows"]
              if row.get("latency_over_floor") and row["regime"] == "one-vs-n" and row["n_candidates"] == 1000]
    if floors:
        lines += ["", "## One query vs 1,000: latency over the floor (forward FLOPs at the backend's GEMM rate)", "",
                  "| run | role | model | backend | mode | p50 ms | floor ms | latency / floor |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | {r['role']} | {r['model']} | {r['backend']} | {r['mode']} | {r['p50_ms']} | "
                  f"{r['floor_ms']} | {r['latency_over_floor']} |" for k, r in floors]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="default: the quickstart teacher's best checkpoint")
    parser.add_argument("--student", default=None, help="default: the quickstart's distilled student checkpoint")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs/bench-stability"))
    parser.add_argument("--doc", default=str(ROOT / "docs/bench-stability.md"))
    args = parser.parse_args()
    quick = ROOT / "runs/quickstart"
    teacher = args.teacher or best_checkpoint(quick / "teacher")
    student = args.student or json.loads((quick / "report.json").read_text())["student"]["checkpoint"]
    recipe = Recipe(Path(args.out), render=markdown)
    recipe.report.update(teacher=teacher, student=student, machine=machine(),
                         command=f"python scripts/bench_stability.py --teacher {teacher} --student {student}")
    recipe.report.setdefault("runs", {})
    for k in range(1, args.runs + 1):
        def one(k: int = k) -> None:
            start = time.perf_counter()
            out = Path(args.out) / f"run{k}"
            report = run_verb(["bench", "--config", str(ROOT / "configs/bench/quickstart.yaml"), "--teacher", teacher,
                               "--students", f"[{student}]", "--out", str(out), "--update_cards", "false"])
            recipe.report["runs"][str(k)] = {"seconds": round(time.perf_counter() - start, 1),
                                             "ratios": report["ratios"], "rows": report["rows"]}
        recipe.stage(f"run{k}", one)
    write_atomic(Path(args.doc), markdown(recipe.report))
    print(markdown(recipe.report))


if __name__ == "__main__":
    main()
