"""Per-tensor or per-channel int8 scales: STS-B dev Spearman and one-query latency of exported students, side by side.

For each exported folder (its `onnx/model.onnx`), quantises the weights four ways with ONNX Runtime's
`quantize_dynamic` (one scale per tensor or per output channel; every quantisable operator, or MatMul/Gemm only)
and measures, beside the folder's torch fp32 embeddings, the cosine Spearman on all of STS-B dev and the latency of
one query (interleaved rounds, median). This is how `distill.onnx_backend.quantize_int8` chose per-channel scales.

    python scripts/int8_scales.py runs/frontier/export/layers-6 runs/frontier/export/e5
    # writes runs/int8-scales/report.{json,md}; with the default --out, docs/int8-scales-report.md is its copy
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from distill import catalog, names, serving
from distill.evaluation import markdown_table
from distill.machine import describe, machine

DEFAULT_OUT = Path("runs/int8-scales")
VARIANTS = {"per tensor": {}, "per channel": {"per_channel": True},
            "per tensor, MatMul only": {"op_types_to_quantize": ["MatMul", "Gemm"]},
            "per channel, MatMul only": {"per_channel": True, "op_types_to_quantize": ["MatMul", "Gemm"]}}
QUERIES = ["A man is playing a guitar on stage.", "Two dogs run through the snow.",
           "The stock market fell sharply today.", "A woman slices an onion."]


def spearman(server: serving.StudentServer, a: list[str], b: list[str], gold: list[float]) -> float:
    from scipy.stats import spearmanr

    cos = torch.nn.functional.cosine_similarity(server.encode(a).float(), server.encode(b).float())
    return round(float(spearmanr(cos.numpy(), gold).statistic), 4)


def quantised(folder: Path, work: Path, name: str, options: dict) -> Path:
    """A copy of the folder's serving files whose int8 model is quantised with `options`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = work / f"{folder.name}-{name.replace(' ', '-').replace(',', '')}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("model_qint8.onnx", "model.safetensors"))
    quantize_dynamic(str(folder / names.ONNX_FILE), str(target / names.INT8_FILE), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **options)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="exported student folders with onnx/model.onnx")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved latency rounds of 200 queries")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = catalog.load("stsb/dev").rows.with_format("arrow")
    a, b = rows["text_a"].to_pylist(), rows["text_b"].to_pylist()
    gold = [float(x) for x in rows["label"].to_pylist()]
    table = []
    for folder in args.folders:
        fp32 = spearman(serving.load(folder, "torch-fp32", threads=2), a, b, gold)
        servers = {}
        for name, options in VARIANTS.items():
            target = quantised(folder, args.out / "work", name, options)
            servers[name] = (serving.load(target, "onnx-int8", threads=2), target)
        latency: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):  # interleaved: every variant sees the same machine state, round after round
            for name, (server, _) in servers.items():
                for q in QUERIES * 5:
                    server.encode([q])
                start = time.perf_counter()
                for _ in range(50):
                    for q in QUERIES:
                        server.encode([q])
                latency[name].append((time.perf_counter() - start) / (50 * len(QUERIES)) * 1000)
        for name, (server, target) in servers.items():
            table.append({"student": str(folder), "int8 scales": name, "fp32 dev": fp32,
                          "int8 dev": spearman(server, a, b, gold),
                          "ms per query (median)": round(statistics.median(latency[name]), 2),
                          "ms spread": [round(min(latency[name]), 2), round(max(latency[name]), 2)],
                          "int8 MB": round((target / names.INT8_FILE).stat().st_size / 1e6)})
        shutil.rmtree(args.out / "work")
    report = {"machine": machine(), "command": "python scripts/int8_scales.py " + " ".join(map(str, args.folders)),
              "rows": table}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    text = (f"# int8 scales (STS-B dev, all 1,500 pairs, cosine; one query, {args.rounds} interleaved rounds)\n\n"
            f"Machine: {describe(report['machine'])}. Command: `{report['command']}`.\n\n"
            + markdown_table([{k: v for k, v in r.items() if k != "ms spread"} | {"ms min-max": "–".join(
                map(str, r["ms spread"]))} for r in table]) + "\n")
    (args.out / "report.md").write_text(text)
    if args.out == DEFAULT_OUT:
        Path("docs/int8-scales-report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
