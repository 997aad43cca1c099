"""Where one query's time goes: the bench's former torch/ONNX one-query path against `distill.serving`'s, stage by
stage, on an exported student and the same 1,000 candidates, plus sentence-transformers on the same weights.

Each stage is timed on its own over many queries (medians, 2 threads); the stages of one path add up to about its
whole, which is timed too. Writes runs/serving-profile/report.json and docs/serving-profile.md.

    python scripts/profile_query.py --student runs/quickstart/export/student
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import catalog, serving
from distill.machine import describe, machine
from distill.recipe import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[Any], Any], items: list[Any], repeats: int) -> float:
    """Median over every call of `fn(item)` (items × repeats, interleaved by repeat)."""
    fn(items[0])
    times = []
    for _ in range(repeats):
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def old_torch_stages(folder: Path, queries: list[str], cands: torch.Tensor, repeats: int) -> dict[str, float]:
    """The bench's former path: BiEncoder.encode([q]) (eval/train toggles, padded HF tokenizer call, mask),
    then a broadcast product over the candidates and a top-k."""
    from students import BiEncoder

    student = BiEncoder.from_pretrained(folder).eval()
    tok, cfg = student.tokenizer, student.config
    enc = {q: tok([cfg["prefix"] + q], padding=True, truncation=True, max_length=cfg["max_seq_length"],
                  return_tensors="pt") for q in queries}
    u = student.encode(queries[:1])
    with torch.inference_mode():
        stages = {
            "train/eval toggles": median_ms(lambda _: (student.eval(), student.train(False)), queries, repeats),
            "tokenise (HF call, padded, mask)": median_ms(
                lambda q: tok([cfg["prefix"] + q], padding=True, truncation=True, max_length=cfg["max_seq_length"],
                              return_tensors="pt"), queries, repeats),
            "forward + pool (with mask)": median_ms(lambda q: student(enc[q]["input_ids"], enc[q]["attention_mask"]),
                                                    queries, repeats),
            "score 1000 (broadcast product)": median_ms(lambda _: (u * cands).sum(-1), queries, repeats),
            "top-10": median_ms(lambda _: set(torch.topk(cands[:, 0], 10).indices.tolist()), queries, repeats),
        }
    return stages


def old_torch_path(folder: Path, cands: torch.Tensor) -> Callable[[str], Any]:
    from students import BiEncoder

    student = BiEncoder.from_pretrained(folder).eval()
    return lambda q: set(torch.topk((student.encode([q]) * cands).sum(-1), 10).indices.tolist())


def new_stages(server: serving.StudentServer, queries: list[str], index: serving.Index,
               repeats: int) -> dict[str, float]:
    """`distill.serving`: Rust tokenizer, unpadded forward without a mask, matrix-vector product, top-k."""
    ids = {q: server.ids(q) for q in queries}
    q0 = server.query(queries[0])
    stages = {"tokenise (Rust, unpadded)": median_ms(server.ids, queries, repeats)}
    if isinstance(server, serving.TorchServer):
        with torch.inference_mode():
            hidden = {q: server.model(input_ids=torch.tensor([ids[q]])).last_hidden_state for q in queries}
            stages["forward"] = median_ms(lambda q: server.model(input_ids=torch.tensor([ids[q]])), queries, repeats)
            stages["pool + normalise"] = median_ms(lambda q: server._pool(hidden[q], None), queries, repeats)
    else:
        arr = {q: np.asarray([ids[q]], dtype=np.int64) for q in queries}
        out = {q: server._run(arr[q], np.ones_like(arr[q])) for q in queries}
        stages["forward"] = median_ms(lambda q: server._run(arr[q], np.ones_like(arr[q])), queries, repeats)
        stages["pool + normalise"] = median_ms(lambda q: server._pool(out[q], None), queries, repeats)
    stages["score 1000 (matrix-vector)"] = median_ms(lambda _: index.matrix @ q0, queries, repeats)
    stages["top-10"] = median_ms(lambda _: index.search(q0, 10), queries, repeats)
    return stages


def st_path(folder: Path, cands: torch.Tensor) -> Callable[[str], Any]:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    return lambda q: torch.topk(cands @ st.encode(q, convert_to_tensor=True), 10).indices.tolist()


def interleaved_wholes(paths: dict[str, Callable[[str], Any]], queries: list[str], repeats: int) -> dict[str, Any]:
    """Each path's whole one-query time, the paths taking turns query by query (drift hits them alike):
    the median and the [min, max] of the per-repeat medians."""
    for fn in paths.values():
        fn(queries[0])
    per_repeat: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        times: dict[str, list[float]] = {name: [] for name in paths}
        for q in queries:
            for name, fn in paths.items():
                start = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - start)
        for name in paths:
            per_repeat[name].append(statistics.median(times[name]) * 1e3)
    return {name: {"median_ms": round(statistics.median(v), 3), "spread_ms": [round(min(v), 3), round(max(v), 3)]}
            for name, v in per_repeat.items()}


def onnx_nodes(folder: Path) -> dict[str, dict[str, Any]]:
    """Operators per ONNX graph in the folder: the fused graph's size, and its fused operators."""
    import collections

    import onnx

    out = {}
    for path in sorted((folder / "onnx").glob("*.onnx")):
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        out[path.name] = {"nodes": sum(ops.values()), "fused": {k: ops[k] for k in (
            "Attention", "QAttention", "SkipLayerNormalization", "BiasGelu") if ops[k]}}
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Where one query's time goes (1 query vs 1,000 pre-encoded candidates)", "",
             f"Machine: {describe(report['machine'])}; {report['threads']} threads; {report['queries']} STS-B test "
             f"queries x {report['repeats']} repeats, medians in ms. Command: `{report['command']}`.", ""]
    lines += ["## The whole query, every path taking turns (median of per-repeat medians, [min, max])", "",
              "| path | ms | spread | vs sentence-transformers |", "|---|---|---|---|"]
    st = report["whole"]["sentence-transformers encode + dot + top-10"]["median_ms"]
    lines += [f"| {name} | **{w['median_ms']}** | {w['spread_ms'][0]}–{w['spread_ms'][1]} | "
              f"{round(st / w['median_ms'], 2)}× |" for name, w in report["whole"].items()]
    lines.append("")
    for path, stages in report["paths"].items():
        lines += [f"## {path}: stage by stage", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in stages.items()]
        lines.append("")
    if report.get("onnx_nodes"):
        lines += ["ONNX graphs served (operators; fused ones): " + "; ".join(
            f"`{k}` {v['nodes']} ({v['fused']})" for k, v in report["onnx_nodes"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="runs/quickstart/export/student")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs/serving-profile"))
    parser.add_argument("--doc", default=str(ROOT / "docs/serving-profile.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.student)
    texts = catalog.texts("stsb/test")
    queries, pool = texts[:args.queries], list(dict.fromkeys(texts))[-1000:]
    report: dict[str, Any] = {"machine": machine(), "threads": args.threads, "queries": len(queries),
                              "repeats": args.repeats, "student": str(folder), "paths": {},
                              "command": "python scripts/profile_query.py --student " + str(folder)}
    fp32 = serving.load(folder, "torch-fp32", args.threads)
    cands = fp32.encode(pool)
    index = serving.Index(cands)
    before = "before: torch fp32 (BiEncoder.encode, broadcast product)"
    report["paths"][before] = old_torch_stages(folder, queries, cands, args.repeats)
    wholes = {before: old_torch_path(folder, cands)}
    for backend in serving.BACKENDS:
        reason = serving.skip_reason(backend)
        if reason or (backend.startswith("onnx") and not (folder / serving._FILES[backend]).is_file()):
            report["paths"][f"after: {backend}"] = {"skipped": reason or "no ONNX file"}
            continue
        server = serving.load(folder, backend, args.threads)
        report["paths"][f"after: {backend} (distill.serving)"] = new_stages(server, queries, index, args.repeats)
        wholes[f"after: {backend} (distill.serving)"] = lambda q, s=server: index.search(s.query(q), 10)[1].tolist()
    wholes["sentence-transformers encode + dot + top-10"] = st_path(folder, cands)
    report["whole"] = interleaved_wholes(wholes, queries, args.repeats)
    report["onnx_nodes"] = onnx_nodes(folder)
    write_atomic(Path(args.out) / "report.json", json.dumps(report, indent=2))
    write_atomic(Path(args.doc), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
