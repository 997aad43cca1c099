"""What `distill bench` reports, from the measured rows alone: extrapolated rows, ratios, `report.md`, the plot.

Every function here takes rows (dicts in the schema of DESIGN.md) and returns rows or text: nothing is timed,
loaded or patched, so the report is a pure function of what was measured.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import statistics
from pathlib import Path
from typing import Any

from distill import names
from distill.bench.floor import floor_ms

VERSIONS_OF = ("torch", "transformers", "onnxruntime", "sentence-transformers", "distill")
NOTES = ["throughput: pairs/s (unique-pairs), queries/s (one-vs-n); medians over interleaved repeats, "
         "spread = [min, max] over repeats",
         "one-vs-n latency: one query, including tokenising and encoding it; the candidates' encoding "
         "is a one-off cost (candidate_encode_s)",
         "the teacher serves each query once across the repeats (query i in repeat i mod repeats)",
         "peak_rss_mb: memory the row adds to the process (model load + peak while serving)",
         "recall@10_vs_teacher: share of the teacher's top 10 (same candidates) in the model's top 10"]


# ---------------------------------------------------------------- rows


def extrapolated_rows(rows: list[dict[str, Any]], ns: list[int], teacher_max_n: int) -> list[dict[str, Any]]:
    """The teacher's one-vs-n rows above `teacher_max_n`, from its rows at the largest measured N.

    A cross-encoder's cost is linear in N (one pass per candidate), so throughput is divided and latencies are
    multiplied by N / measured N; no accuracy is claimed (`value` None), and `extrapolated_from` names the N.
    """
    measured_ns = [m for m in ns if m <= teacher_max_n]
    if not measured_ns:
        return []
    base_n = max(measured_ns)
    bases = [r for r in rows if r["role"] == "teacher" and r["regime"] == "one-vs-n" and r["n_candidates"] == base_n
             and not r.get("extrapolated_from")]
    return [_scaled(row, n, base_n) for n in sorted(ns) if n > teacher_max_n for row in bases]


def _scaled(row: dict[str, Any], n: int, base_n: int) -> dict[str, Any]:
    scale = n / base_n
    return {**row, "n_candidates": n, "value": None, "extrapolated_from": base_n,
            "throughput": None if row["throughput"] is None else round(row["throughput"] / scale, 4),
            "p50_ms": None if row["p50_ms"] is None else round(row["p50_ms"] * scale, 3),
            "p95_ms": None if row["p95_ms"] is None else round(row["p95_ms"] * scale, 3),
            "spread": None if row["spread"] is None else [round(x / scale, 4) for x in row["spread"]],
            "samples": [round(x / scale, 4) for x in row["samples"]]}


def in_report_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unique pairs first, then one-vs-n by N, measured rows before extrapolated ones (otherwise as given)."""
    return sorted(rows, key=lambda r: (r["regime"] == "one-vs-n", r["n_candidates"] or 0,
                                       "extrapolated_from" in r))


def skipped_row(role: str, model: str, backend: str, reason: str) -> dict[str, Any]:
    """A model × backend not measured, with the reason in place of figures."""
    return {"role": role, "model": model, "backend": backend, "mode": None, "regime": None, "n_candidates": None,
            "throughput": None, "p50_ms": None, "p95_ms": None, "peak_rss_mb": None, "size_mb": None,
            "metric": None, "value": None, "spread": None, "skipped": reason}


# ---------------------------------------------------------------- ratios


def _find(rows: list[dict[str, Any]], role: str, backend: str, regime: str, n: int | None = None,
          mode: str | None = None) -> dict[str, Any] | None:
    """The measured row (with samples) of a role, backend, regime, N and, if given, mode."""
    return next((r for r in rows if r["role"] == role and r["backend"] == backend and r["regime"] == regime
                 and r["n_candidates"] == n and (mode is None or r["mode"] == mode) and r.get("samples")
                 and not r.get("extrapolated_from")), None)


def _ratio(name: str, num: dict | None, den: dict | None, target: float | None = None,
           **info: Any) -> list[dict[str, Any]]:
    """num / den per repeat: median, [min, max] and a verdict that is only a win or loss outside the spread; with
    a `target`, `target_verdict` is met / missed only when the whole spread is on one side of it."""
    if not num or not den:
        return []
    per = [a / b for a, b in zip(num["samples"], den["samples"]) if b]
    lo, hi, med = min(per), max(per), statistics.median(per)
    verdict = "win" if lo > 1 else "loss" if hi < 1 else "tie (spread overlaps 1.0)"
    out = {"name": name, "median": round(med, 3), "spread": [round(lo, 3), round(hi, 3)],
           "numerator": f"{num['role']} {num.get('model', '')} {num['backend']} {num['throughput']}",
           "denominator": f"{den['role']} {den.get('model', '')} {den['backend']} {den['throughput']}",
           "verdict": verdict,
           **info}
    if target is not None:
        out.update(target=target, target_verdict="met" if lo >= target else "missed" if hi < target else
                   "borderline (spread overlaps the target)")
    return [out]


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed ratios the README states, each from per-repeat samples of the same interleaved run."""
    up = "unique-pairs"
    s32 = _find(rows, "student", "torch-fp32", up, mode=names.COSINE)
    s8 = _find(rows, "student", "onnx-int8", up, mode=names.COSINE)
    out = _ratio("student encode vs SentenceTransformer.encode (unique pairs, throughput)",
                 s32, _find(rows, "st-student", "torch-fp32", up))
    out += _ratio("teacher vs CrossEncoder.predict (unique pairs, throughput)",
                  _find(rows, "teacher", "torch-fp32", up), _find(rows, "st-teacher", "torch-fp32", up), target=1.0)
    if s32 and s8:
        delta = None if s8["value"] is None or s32["value"] is None else round(s8["value"] - s32["value"], 4)
        out += _ratio("student ONNX int8 vs torch fp32 (unique pairs, throughput)", s8, s32, target=2.0,
                      spearman_delta=delta)
    out += _ratio("student vs teacher, unique pairs (throughput)", s32, _find(rows, "teacher", "torch-fp32", up))
    for n in sorted({r["n_candidates"] for r in rows if r["regime"] == "one-vs-n" and r.get("samples")}):
        out += _one_vs_n_ratios(rows, n)
    return out


def _fastest(rows: list[dict[str, Any]], role: str, n: int) -> dict[str, Any] | None:
    """The measured one-vs-n row of `role` at N with the most queries/s (cosine for students)."""
    own = [r for r in rows if r["role"] == role and r["regime"] == "one-vs-n" and r["n_candidates"] == n
           and r.get("samples") and not r.get("extrapolated_from") and r["mode"] in (names.COSINE, names.CROSS_ENCODER)]
    return max(own, key=lambda r: r["throughput"]) if own else None


def _one_vs_n_ratios(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    q = f"one query vs {n}"
    student = _find(rows, "student", "torch-fp32", "one-vs-n", n, mode=names.COSINE)
    fastest, st = _fastest(rows, "student", n), _find(rows, "st-student", "torch-fp32", "one-vs-n", n)
    out = _ratio(f"{q}: student vs SentenceTransformer (encode + dot + top-k), queries/s", student, st, target=1.0)
    if fastest and fastest is not student:
        out += _ratio(f"{q}: student at its fastest ({fastest['backend']}) vs SentenceTransformer on the same "
                      f"weights, queries/s", fastest, st, target=2.0)
    teacher32, teacher = _find(rows, "teacher", "torch-fp32", "one-vs-n", n), _fastest(rows, "teacher", n)
    out += _ratio(f"{q}: student torch fp32 vs teacher torch fp32, queries/s", student, teacher32, target=500.0,
                  recall_at_10=student["value"] if student else None, flop_ratio=_flop_ratio(teacher32, student))
    if teacher:
        out += _ratio(f"{q}: student vs teacher at its fastest ({teacher['backend']}), queries/s", student, teacher,
                      recall_at_10=student["value"] if student else None)
    if teacher and fastest:
        out += _ratio(f"{q}: student at its fastest ({fastest['backend']}) vs teacher at its fastest "
                      f"({teacher['backend']}), queries/s", fastest, teacher, target=1000.0,
                      recall_at_10=fastest["value"], flop_ratio=_flop_ratio(teacher, fastest))
    for peer in [r for r in rows if r["role"] == "peer" and r["regime"] == "one-vs-n" and r["n_candidates"] == n
                 and r.get("samples")]:
        out += _ratio(f"{q}: student at its fastest ({fastest['backend'] if fastest else '-'}) vs {peer['model']} "
                      f"(sentence-transformers), queries/s", fastest, peer,
                      recall_at_10=fastest["value"] if fastest else None, peer_recall_at_10=peer["value"])
    return out


def _flop_ratio(num: dict[str, Any] | None, den: dict[str, Any] | None) -> float | None:
    if not num or not den or not num.get("query_gflop") or not den.get("query_gflop"):
        return None
    return round(num["query_gflop"] / den["query_gflop"], 1)


def with_floors(rows: list[dict[str, Any]], gflops: dict[str, float]) -> list[dict[str, Any]]:
    """Each row with a `query_gflop` gets its floor (that work at its backend's measured GEMM rate) and its
    p50 latency as a multiple of it."""
    out = []
    for row in rows:
        rate = gflops.get(row.get("backend") or "")
        if row.get("query_gflop") and rate and row.get("p50_ms") is not None:
            floor = floor_ms(row["query_gflop"] * 1e9, rate)
            row = {**row, "floor_ms": float(f"{floor:.4g}"), "latency_over_floor": round(row["p50_ms"] / floor, 2)}
        out.append(row)
    return out


# ---------------------------------------------------------------- report.json's meta, report.md


def meta(inputs: dict[str, Any], machine: dict[str, Any], repeats: int, batch_size: int, chunk: int,
         folders: dict[str, dict[str, Any]], base_rss: float, teacher_max_n: int) -> dict[str, Any]:
    """What was measured, where and how: the report's `meta`."""
    versions = {}
    for pkg in VERSIONS_OF:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "versions": versions, "models": folders, "pairs": inputs["source"],
            "n_pairs": len(inputs["a"]), "queries": len(inputs.get("queries", [])),
            "candidate_pool": inputs.get("pool_source"), "repeats": repeats, "warm_up": "one untimed pass per row",
            "batch_size": batch_size, "chunk_pairs": chunk, "teacher_max_n": teacher_max_n,
            "base_rss_mb": round(base_rss, 1), "notes": list(NOTES)}


def markdown(report: dict[str, Any]) -> str:
    """The report people read: setup, the table, the ratios, the plot."""
    meta = report["meta"]
    lines = ["# distill bench", "",
             f"{meta['date']} · {meta['machine']['cpu']} · {meta['machine']['threads']} threads · "
             + " · ".join(f"{k} {v}" for k, v in meta["versions"].items() if v), "",
             f"Pairs: {meta['pairs']} ({meta['n_pairs']}); one-vs-n: {meta['queries']} queries, candidates: "
             f"{meta['candidate_pool']}; {meta['repeats']} interleaved repeats after a warm-up; batch "
             f"{meta['batch_size']}.", "",
             "| role | model | backend | mode | regime | N | throughput | spread | p50 ms | p95 ms | RSS MB | "
             "size MB | metric | value |", "|" + "---|" * 14]
    lines += [_markdown_row(r) for r in report["rows"]]
    lines += ["", "## Ratios (per-repeat ratios of the same run: median, [min, max])", "",
              "| ratio | median | spread | verdict | extra |", "|---|---|---|---|---|"]
    for q in report["ratios"]:
        extra = ", ".join(f"{k}={v}" for k, v in q.items()
                          if k not in ("name", "median", "spread", "numerator", "denominator", "verdict"))
        lines.append(f"| {q['name']} | {q['median']}× | {q['spread'][0]}–{q['spread'][1]} | {q['verdict']} | "
                     f"{extra} |")
    if report.get("tatoeba"):
        lines += ["", "## Tatoeba bitext retrieval", "", "| model | backend | direction | N | accuracy | nDCG@10 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['backend']} | {t['direction']} | {t['n']} | {t['accuracy']} | "
                  f"{t['ndcg@10']} |" for t in report["tatoeba"]]
    lines += ["", "Notes: " + "; ".join(meta["notes"]) + ".", "", f"![pareto]({names.PARETO_PNG})", ""]
    return "\n".join(lines)


def _markdown_row(r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return f"| {r['role']} | {r['model']} | {r['backend']} | — | — | — | skipped: {r['skipped']} | | | | | | | |"
    unit = "pairs/s" if r["regime"] == "unique-pairs" else "q/s"
    note = f" (extrapolated from N={r['extrapolated_from']})" if r.get("extrapolated_from") else ""
    value = "—" if r["value"] is None else f"{r['value']:.4f}"
    spread = "—" if not r.get("spread") else f"{r['spread'][0]:.4g}–{r['spread'][1]:.4g}"
    return (f"| {r['role']} | {r['model']} | {r['backend']} | {r['mode']} | {r['regime']} | "
            f"{r['n_candidates'] or '—'} | {r['throughput']:.4g} {unit}{note} | {spread} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['peak_rss_mb']} | {r['size_mb']} | {r['metric']} | {value} |")


# ---------------------------------------------------------------- pareto.png

# colour = who (distill or sentence-transformers, teacher or student), marker = backend, hollow = DSE head
COLOURS = {"teacher": "tab:red", "st-teacher": "tab:orange", "student": "tab:blue", "st-student": "tab:cyan"}
MARKERS = {"torch-fp32": "o", "torch-bf16": "s", "onnx-fp32": "^", "onnx-int8": "D"}


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both throughput and accuracy (`value`), fastest first."""
    front, best = [], float("-inf")
    for r in sorted(points, key=lambda r: (-r["throughput"], -r["value"])):
        if r["value"] > best:
            front.append(r)
            best = r["value"]
    return front


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput (log) against accuracy per regime, the Pareto front marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("distill bench: matplotlib is not installed; no pareto.png (pip install 'distill[all]')")
        return
    panels = [("unique-pairs", None, "STS Spearman", "pairs/s")]
    ns = sorted({r["n_candidates"] for r in rows if r["regime"] == "one-vs-n" and r["value"] is not None})
    if ns:
        panels.append(("one-vs-n", ns[-1], f"recall@10 of the teacher's top 10 (N={ns[-1]})", "queries/s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 3, 4.8), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (regime, n, ylabel, unit) in zip(axes[0], panels):
        pts = [r for r in rows if r["regime"] == regime and r["n_candidates"] == n and r["value"] is not None
               and r["throughput"]]
        for r in pts:
            label = f"{r['role']} {r['backend']}" + (" (DSE head)" if r["mode"] == names.DSE else "")
            colour = COLOURS.get(r["role"], "k")
            handles[label] = ax.scatter(r["throughput"], r["value"], s=55, zorder=3, marker=MARKERS[r["backend"]],
                                        facecolors="none" if r["mode"] == names.DSE else colour,
                                        edgecolors=colour, linewidths=1.5, label=label)
        front = pareto_front(pts)
        if front:
            handles["Pareto front"] = ax.plot([r["throughput"] for r in front], [r["value"] for r in front], "--",
                                              color="grey", zorder=2, label="Pareto front")[0]
        ax.set_xscale("log")
        ax.set_xlabel(f"throughput ({unit}, log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(regime if n is None else f"{regime}, N = {n}")
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / (6 * len(panels) + 3), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
