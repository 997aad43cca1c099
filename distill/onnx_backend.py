"""ONNX Runtime: export a transformers encoder, quantise it to int8, and run it as a student or teacher.

The exported graph is the bare encoder (`last_hidden_state`, or `logits` for a cross-encoder), the layout
sentence-transformers' ONNX backend loads from `onnx/model.onnx`; pooling and normalisation stay outside it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

EXTRA_HINT = "pip install 'distill[export]' (onnx, onnxruntime, onnxscript)"


def require_onnxruntime() -> Any:
    """onnxruntime, or a one-line error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"the ONNX backends need onnxruntime: {EXTRA_HINT}") from None
    return onnxruntime


class _Graph(nn.Module):
    # named positional inputs and one named output: what ONNX and sentence-transformers expect
    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


class _GraphWithTypes(_Graph):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids), self.output)


def input_names(tokenizer: Any) -> list[str]:
    """The tokenizer outputs a graph takes (token_type_ids only for models that use them)."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]


def export_onnx(model: nn.Module, tokenizer: Any, path: Path, output: str) -> None:
    """Write `model` (a transformers model in eval mode) as an ONNX graph with dynamic batch and length axes."""
    require_onnxruntime()
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it; say so before torch fails deep inside
    except ImportError:
        raise ImportError(f"ONNX export needs onnxscript: {EXTRA_HINT}") from None
    names = input_names(tokenizer)
    sample = tokenizer(["a short text", "a somewhat longer text to trace with"], ["x", "y"] if output == "logits"
                       else None, padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        graph = (_GraphWithTypes if len(names) == 3 else _Graph)(model.eval(), output)
        torch.onnx.export(graph, tuple(sample[n] for n in names), str(path),
                          input_names=names, output_names=[output], dynamo=True, external_data=False,
                          dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), verbose=False)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weights of MatMul/Gemm (activations quantised at run time)."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it logs its "run pre-processing first" advice on the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)  # leave the user's logging as it was


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with a fixed number of intra-op threads."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # no busy-waiting between runs: a spinning pool of one session would steal the cores of the next model timed
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxStudent:
    """A distill student served by ONNX Runtime: tokenise, run the encoder graph, pool and normalise in numpy.

    Args:
        folder: an exported student folder (`distill export --onnx`).
        file: the graph inside it (`onnx/model.onnx` or `onnx/model_qint8.onnx`).
        config: the student's options (`distill_student.json`: pooling, normalize, max_seq_length, prefix).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, folder: Path, file: str, config: dict[str, Any], threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.config = config
        self.names = input_names(self.tokenizer)
        self.session = session(folder / file, threads)

    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Embeddings (len(texts), dim) float32, sorted by length inside to cut padding."""
        cfg = self.config
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        parts: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([cfg["prefix"] + texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=cfg["max_seq_length"], return_tensors="np")
            hidden = self.session.run(None, {n: enc[n].astype(np.int64) for n in self.names})[0]
            if cfg["pooling"] == "cls":
                emb = hidden[:, 0]
            else:
                mask = enc["attention_mask"][..., None].astype(hidden.dtype)
                emb = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            if cfg["normalize"]:
                emb = emb / np.clip(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12, None)
            parts.append(emb)
        out = np.empty((len(texts), parts[0].shape[-1]), dtype=np.float32) if parts else np.empty((0, 0), np.float32)
        if parts:
            out[order] = np.concatenate(parts)
        return torch.from_numpy(out)


class OnnxCrossEncoder:
    """A cross-encoder graph (`logits`) served by ONNX Runtime; scores are the sigmoid of the logit."""

    def __init__(self, folder: Path, file: str, max_length: int, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.max_length = max_length
        self.names = input_names(self.tokenizer)
        self.session = session(folder / file, threads)

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True,
                                 truncation=True, max_length=self.max_length, return_tensors="np")
            logits = self.session.run(None, {n: enc[n].astype(np.int64) for n in self.names})[0].reshape(-1)
            out[idx] = 1 / (1 + np.exp(-logits))
        return out
