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


# model types whose attention ONNX Runtime's transformer optimizer fuses (its "bert" patterns cover these)
FUSABLE = ("bert", "roberta", "xlm-roberta")


def export_onnx(model: nn.Module, tokenizer: Any, path: Path, output: str, fuse: bool = True) -> None:
    """Write `model` (a transformers model in eval mode) as an ONNX graph with dynamic batch and length axes.

    With `fuse` and a BERT-like model, the graph is traced (TorchScript exporter, eager attention) and ONNX
    Runtime's transformer optimizer fuses each layer's attention, skip-connection LayerNorms and GELU into single
    operators: a one-query forward has ~60 nodes instead of ~285, and the int8 graph quantises the fused attention
    (QAttention). Where fusing is not possible, the plain graph of torch's dynamo exporter is written. The export
    checks the graph against torch either way.
    """
    require_onnxruntime()
    names = input_names(tokenizer)
    sample = tokenizer(["a short text", "a somewhat longer text to trace with"], ["x", "y"] if output == "logits"
                       else None, padding=True, return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    graph = (_GraphWithTypes if len(names) == 3 else _Graph)(model.eval(), output)
    if fuse and getattr(model.config, "model_type", "") in FUSABLE and _export_fused(graph, sample, names, path):
        return
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it; say so before torch fails deep inside
    except ImportError:
        raise ImportError(f"ONNX export needs onnxscript: {EXTRA_HINT}") from None
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(sample[n] for n in names), str(path),
                          input_names=names, output_names=[output], dynamo=True, external_data=False,
                          dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), verbose=False)


def _export_fused(graph: nn.Module, sample: Any, names: list[str], path: Path) -> bool:
    """The traced, fused graph at `path`; False (nothing written) when tracing or fusing fails."""
    import tempfile

    from onnxruntime.transformers import optimizer

    model = graph.model
    attention = model.config._attn_implementation
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, graph.output]}
    try:
        model.set_attn_implementation("eager")  # the optimizer matches the eager attention's pattern
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = Path(tmp) / "traced.onnx"
            torch.onnx.export(graph, tuple(sample[n] for n in names), str(traced), input_names=names,
                              output_names=[graph.output], dynamic_axes=axes, opset_version=17, dynamo=False)
            fused = optimizer.optimize_model(str(traced), model_type="bert",
                                             num_heads=model.config.num_attention_heads,
                                             hidden_size=model.config.hidden_size)
            fused.save_model_to_file(str(path))
        return True
    except Exception as err:  # best effort: the dynamo graph is the fallback
        logging.getLogger(__name__).warning("ONNX: no fused graph (%s); writing the plain one", err)
        path.unlink(missing_ok=True)
        return False
    finally:
        model.set_attn_implementation(attention)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations quantised at run time), one scale per output channel.

    Per-channel scales, chosen on STS-B dev against one scale per tensor (ONNX Runtime's default): the frontier's
    MiniLM-L6 student 0.8941 -> 0.8970 (fp32 0.8968), its multilingual-e5-small student 0.8859 -> 0.8913 (fp32
    0.8897); one query costs the same for MiniLM-L6 and ~15 % more for e5 (scripts/int8_scales.py, docs/export.md).
    """
    require_onnxruntime()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it logs its "run pre-processing first" advice on the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        # DefaultTensorType: the fused graph's contrib operators have no type inference in the quantiser
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)  # leave the user's logging as it was


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with a fixed number of intra-op threads."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # worker threads busy-wait between the parallel parts of one run (a one-query run is many short operators:
    # waking sleeping threads for each cost ~40 % of its time), and stop spinning when the run returns, so the
    # cores are free for whatever runs next (an idle spinning pool would slow the next model timed ~2x)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
