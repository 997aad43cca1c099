"""The physical floor of one query: the FLOPs of its forward pass over the machine's measured GEMM rate.

A transformer encoder's forward pass is almost all matrix products, so `forward_flops(config, tokens) /
gemm_rate(backend)` is the fastest one query could be on this machine in that backend's arithmetic; a row's
latency over its floor says how much of its time is overhead (tokenising, dispatch, memory traffic).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def gemm_flops(n: int) -> float:
    """Multiply-adds of an n×n by n×n product, counted as 2 FLOPs each."""
    return 2.0 * n ** 3


def forward_flops(config: dict[str, Any], tokens: int) -> float:
    """FLOPs of one text of `tokens` tokens through a BERT-like encoder (matrix products only).

    Per layer: the Q, K, V and output projections (4·t·h² multiply-adds), the feed-forward block (2·t·h·f) and the
    attention scores and their weighted sum (2·t²·h); embeddings, norms and softmax are left out (a few percent).
    """
    h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    t = tokens
    return 2.0 * layers * (4 * t * h * h + 2 * t * h * f + 2 * t * t * h)


def floor_ms(flops: float, gflops: float) -> float:
    """The time `flops` take at `gflops` (10^9 FLOP/s), in milliseconds."""
    return flops / (gflops * 1e9) * 1e3


def _best_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up: the kernels' one-off set-up is not the rate
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops(backend: str, n: int = 1024, repeats: int = 5, threads: int | None = None) -> float:
    """The machine's square-GEMM rate (GFLOP/s, best of `repeats`) in a backend's arithmetic and library:
    torch fp32 / bf16 (oneDNN or MKL), ONNX Runtime fp32 (MatMul) and int8 (MatMulInteger, as dynamic int8 runs)."""
    if backend.startswith("torch"):
        dtype = torch.bfloat16 if backend == "torch-bf16" else torch.float32
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        with torch.inference_mode():
            seconds = _best_seconds(lambda: a @ b, repeats)
    else:
        session, feed = _ort_gemm(backend == "onnx-int8", n, threads)
        seconds = _best_seconds(lambda: session.run(None, feed), repeats)
    return gemm_flops(n) / seconds / 1e9


def _ort_gemm(int8: bool, n: int, threads: int | None) -> tuple[Any, dict[str, np.ndarray]]:
    """A one-node ONNX graph (MatMul, or MatMulInteger on uint8 × int8) in an ONNX Runtime session."""
    import onnx
    from onnx import TensorProto, helper

    from distill.onnx_backend import session

    elem, out = (TensorProto.UINT8, TensorProto.INT32) if int8 else (TensorProto.FLOAT, TensorProto.FLOAT)
    b_elem = TensorProto.INT8 if int8 else TensorProto.FLOAT
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", elem, [n, n]),
                                               helper.make_tensor_value_info("b", b_elem, [n, n])],
                              [helper.make_tensor_value_info("c", out, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(0)
    if int8:
        feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    else:
        feed = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, str(path))
        return session(path, threads), feed
