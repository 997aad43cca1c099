"""`distill bench`: speed versus accuracy of the teacher and its students, side by side, on the same data.

Regimes: `unique-pairs` (every pair new: both texts encoded, then scored) and `one-vs-n` (one query against N
pre-encoded candidates; the candidates' encoding is a one-off cost reported apart). Backends: torch fp32/bf16 and
ONNX Runtime fp32/int8, with sentence-transformers' `CrossEncoder.predict` and `SentenceTransformer.encode` on the
same weights as baselines. Every row is run `repeats` times, interleaved with the other rows (so drift in the
machine's speed hits all rows alike), after a warm-up; figures are medians with their spread over repeats.

The package, one concept per module: `runners` (each model on each backend), `workloads` (the inputs, the two
regimes, Tatoeba), `timing` (repeats, percentiles, memory, the machine), `report` (rows -> ratios, extrapolated
rows, report.md, pareto.png). This module is the verb: validate -> prepare -> measure -> report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill import export as exporting
from distill import names, onnx_backend, tracking
from distill.bench.floor import gemm_gflops
from distill.bench.report import (
    extrapolated_rows,
    in_report_order,
    markdown,
    meta,
    plot_pareto,
    ratios,
    skipped_row,
    with_floors,
)
from distill.bench.runners import BACKENDS, BenchError, Runner, build_runners, prepare, skips
from distill.bench.timing import RssSampler, machine, run_interleaved
from distill.bench.workloads import ONE_VS_N, REGIMES, TOP_K, build_tasks, measured_rows, read_inputs, tatoeba_rows
from distill.machine import bf16_reason

__all__ = ["BACKENDS", "REGIMES", "TOP_K", "BenchError", "Runner", "RssSampler", "extrapolated_rows", "main",
           "markdown", "plot_pareto", "ratios"]


def main(teacher: str | None = None, students: list[str] | None = None, out: str = "runs/bench",
         backends: list[str] | None = None, teacher_backends: list[str] | None = None,
         regimes: list[str] | None = None, n_candidates: list[int] | None = None, pairs: str = "stsb/test",
         label_range: tuple[float, float] | None = None, max_pairs: int | None = None, queries: int = 10,
         repeats: int = 5, batch_size: int = 32, chunk_pairs: int = 256, threads: int | None = None,
         baselines: bool = True, teacher_max_n: int = 1000, tatoeba: list[str] | None = None,
         update_cards: bool = True, wandb_run: str | None = None, peers: list[str] | None = None,
         floor_gemm_n: int = 1024, teacher_queries: int | None = None) -> dict[str, Any]:
    """Measure speed versus accuracy of a teacher and students (report.json, report.md, pareto.png).

    Args:
        teacher: the teacher: a `distill fit` checkpoint or an exported teacher folder.
        students: students: checkpoints or exported folders (`distill export`).
        out: output folder (`runs/<experiment>/bench`).
        backends: student backends, of torch-fp32, torch-bf16, onnx-fp32, onnx-int8.
        teacher_backends: teacher backends (same names); the teacher's fastest one is used for the speed-up ratio.
        regimes: unique-pairs and/or one-vs-n.
        n_candidates: candidate pool sizes N for one-vs-n.
        pairs: the pair data (a catalog name like `stsb/test`, a file, or hf:<id>[:<config>]:<split>).
        label_range: the gold labels' range, for a pair file with labels (catalog sets know theirs).
        max_pairs: use only the first pairs (unique-pairs accuracy and timing).
        queries: queries per N in one-vs-n (first texts of distinct pairs, never in the candidate pool).
        repeats: interleaved timed repeats per row (>= 5 for reported figures), after one warm-up.
        batch_size: texts (or pairs, for the teacher) per forward pass, the same for every model and baseline.
        chunk_pairs: unique-pairs requests: the pairs arrive in chunks of this size; latency is per chunk.
        threads: intra-op threads for torch and ONNX Runtime (default: all cores).
        baselines: also time sentence-transformers on the same weights.
        teacher_max_n: above this N the teacher's one-vs-n latency is extrapolated linearly (and so labelled).
        tatoeba: Tatoeba languages (ISO 639-1 like `de`, or Tatoeba codes like `deu`) for bitext retrieval
            accuracy of the students (xx->en and en->xx, 1 vs the language's up to 1000 sentences).
        update_cards: add the measured figures to exported folders' model cards.
        wandb_run: also log the tables and the Pareto plot to this W&B run (`entity/project/run_id`).
        peers: models a user would pick instead, served by plain sentence-transformers in the same run (`role:
            peer`), e.g. `[all-MiniLM-L6-v2, all-mpnet-base-v2]` (a backbone short name or a local folder).
        floor_gemm_n: the square GEMM size whose rate, measured per backend, sets each row's floor (0: none).
        teacher_queries: one-vs-n queries the teacher serves (default: all); each is N cross-encoder passes, so
            fewer teacher queries let the students serve many (a stable spread) in the same time.
    """
    plan = Plan.checked(teacher, students, backends, teacher_backends, regimes, n_candidates, queries, repeats,
                        batch_size, chunk_pairs, threads, baselines, teacher_max_n)
    if teacher_queries is not None and not 1 <= teacher_queries <= queries:
        raise BenchError(f"teacher_queries={teacher_queries}: must be between 1 and queries={queries}")
    torch.set_num_threads(plan.threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = read_inputs(pairs, label_range, max_pairs, queries, plan.pool_size)
    sampler = RssSampler()
    base_rss = sampler.current()
    folders = prepare(teacher, students or [], out_dir, plan.backends, plan.teacher_backends)
    rows, bitext = _measure(plan, folders, inputs, sampler, tatoeba or [], peers or [], teacher_queries)
    gflops = _gemm_rates(plan, floor_gemm_n)
    rows = with_floors(rows, gflops)
    report = {"meta": meta(inputs, machine(plan.threads), plan.repeats, plan.batch_size, plan.chunk_pairs, folders,
                           base_rss, plan.teacher_max_n)
              | {"floor": {"gemm_n": floor_gemm_n, "gflops": gflops}, "teacher_queries": teacher_queries or queries,
                 "peers": peers or []},
              "rows": rows, "ratios": ratios(rows), "tatoeba": bitext}
    _write(report, out_dir, wandb_run)
    if update_cards:
        _update_cards(folders, rows)
    print((out_dir / names.REPORT_MD).read_text())
    return report


@dataclass(frozen=True)
class Plan:
    """`main`'s measuring options, defaulted and checked."""

    backends: list[str]
    teacher_backends: list[str]
    regimes: list[str]
    n_candidates: list[int]  # ascending
    repeats: int
    batch_size: int
    chunk_pairs: int
    threads: int
    baselines: bool
    teacher_max_n: int

    @property
    def pool_size(self) -> int:
        """Candidates to gather for one-vs-n (0 when it is not run)."""
        return max(self.n_candidates) if ONE_VS_N in self.regimes else 0

    @classmethod
    def checked(cls, teacher: str | None, students: list[str] | None, backends: list[str] | None,
                teacher_backends: list[str] | None, regimes: list[str] | None, n_candidates: list[int] | None,
                queries: int, repeats: int, batch_size: int, chunk_pairs: int, threads: int | None,
                baselines: bool, teacher_max_n: int) -> Plan:
        """The plan, or a `BenchError` naming the key and the fix (onnxruntime is required when asked for)."""
        plan = cls(backends=list(backends or ["torch-fp32", "onnx-int8"]),
                   teacher_backends=list(teacher_backends or ["torch-fp32"]), regimes=list(regimes or REGIMES),
                   n_candidates=sorted(n_candidates or [10, 100, 1000]), repeats=repeats, batch_size=batch_size,
                   chunk_pairs=chunk_pairs, threads=threads or os.cpu_count() or 1, baselines=baselines,
                   teacher_max_n=teacher_max_n)
        for key, given, allowed in (("backends", plan.backends, BACKENDS),
                                    ("teacher_backends", plan.teacher_backends, BACKENDS),
                                    ("regimes", plan.regimes, REGIMES)):
            unknown = [b for b in given if b not in allowed]
            if unknown:
                raise BenchError(f"{key}: unknown {unknown}; choose from {list(allowed)}")
        if not teacher and not students:
            raise BenchError("nothing to measure: set `teacher` and/or `students`")
        if repeats < 1 or queries < 1:
            raise BenchError("repeats and queries must be >= 1")
        if teacher and plan.pool_size and teacher_max_n < plan.n_candidates[0]:
            raise BenchError(f"teacher_max_n={teacher_max_n} is below every n_candidates {plan.n_candidates}: the "
                             f"teacher's one-vs-n rows would have no measured N to extrapolate from; set "
                             f"teacher_max_n >= {plan.n_candidates[0]}")
        if any(b.startswith("onnx") for b in [*plan.backends, *plan.teacher_backends]):
            onnx_backend.require_onnxruntime()
        return plan


def _gemm_rates(plan: Plan, n: int) -> dict[str, float]:
    """Each backend's square-GEMM rate (GFLOP/s) on this machine, measured after the rows (same threads)."""
    if n <= 0:
        return {}
    used = {"torch-fp32", *plan.backends, *plan.teacher_backends}  # torch fp32: sentence-transformers and peers
    return {b: round(gemm_gflops(b, n, threads=plan.threads), 1) for b in BACKENDS if b in used
            and not (b == "torch-bf16" and bf16_reason())}


def _measure(plan: Plan, folders: dict[str, dict[str, Any]], inputs: dict[str, Any], sampler: RssSampler,
             tatoeba: list[str], peers: list[str],
             teacher_queries: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time every task, interleaved; -> the report's rows (measured, extrapolated, skipped) and Tatoeba rows."""
    runners = build_runners(folders, plan.backends, plan.teacher_backends, plan.baselines, plan.threads,
                            plan.batch_size, sampler, peers)
    tasks = build_tasks(runners, plan.regimes, plan.n_candidates, inputs, plan.chunk_pairs, plan.teacher_max_n,
                        plan.repeats, teacher_queries)
    run_interleaved(tasks, plan.repeats, sampler)
    measured = [row for task in tasks for row in measured_rows(task)]
    rows = in_report_order([*measured, *extrapolated_rows(measured, plan.n_candidates, plan.teacher_max_n)])
    rows += [skipped_row(*s) for s in skips(folders, plan.backends, plan.teacher_backends)]
    return rows, tatoeba_rows(runners, tatoeba) if tatoeba else []


def _write(report: dict[str, Any], out_dir: Path, wandb_run: str | None) -> None:
    """report.json, report.md, pareto.png; and to W&B when asked."""
    (out_dir / names.REPORT_JSON).write_text(json.dumps(report, indent=2))
    (out_dir / names.REPORT_MD).write_text(markdown(report))
    plot = out_dir / names.PARETO_PNG
    plot_pareto(report["rows"], plot)
    if wandb_run:
        with tracking.logging_to(wandb_run) as run:
            tracking.log_table("bench/rows", report["rows"], run=run)
            tracking.log_table("bench/ratios", report["ratios"], run=run)
            tracking.log_table("bench/tatoeba", report["tatoeba"], run=run)
            if plot.is_file():
                tracking.log_image("bench/pareto", plot, run=run)


def _update_cards(folders: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Each exported folder's model card gets its own measured rows."""
    for name, info in folders.items():
        own = [r for r in rows if r["model"] == name and r.get("throughput") is not None]
        report_file = Path(info["folder"]) / names.EXPORT_REPORT
        if own and report_file.is_file():
            exporting.write_card(Path(info["folder"]), json.loads(report_file.read_text()), own)
