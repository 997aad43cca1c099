"""Serving an exported student the way a search engine calls it: one query at a time against pre-encoded candidates.

`load(folder, backend)` gives a `StudentServer` with `query(text)` (one text, the latency path) and
`encode(texts)` (batches, for candidates). The one-query path does only what one query needs: the Rust tokenizer
(no padding, no attention mask: one unpadded sequence), one forward pass with the weights already in the serving
dtype, pooling over the real tokens; `Index.search` is one matrix-vector product and a top-k. What it removed, and
what each part costs, is measured by `scripts/profile_query.py` (docs/serving-profile.md).

Backends: `torch-fp32`; `torch-bf16` (weights cast once, not autocast per call; needs a CPU with native bf16);
`onnx-fp32` and `onnx-int8` (ONNX Runtime with all graph optimisations and a fixed thread pool).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import names
from distill.machine import bf16_reason

BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")
_FILES = {"torch-fp32": "model.safetensors", "torch-bf16": "model.safetensors", "onnx-fp32": names.ONNX_FILE,
          "onnx-int8": names.INT8_FILE}


class ServingError(ValueError):
    """A folder or backend that cannot serve; the message names the file or the reason and the fix."""


def skip_reason(backend: str) -> str | None:
    """Why this machine cannot run a backend, or None."""
    if backend not in BACKENDS:
        raise ServingError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return bf16_reason() if backend == "torch-bf16" else None


def load(folder: str | Path, backend: str = "torch-fp32", threads: int | None = None) -> StudentServer:
    """An exported student folder (`distill export`) served on `backend` with `threads` intra-op threads."""
    folder = Path(folder)
    reason = skip_reason(backend)
    if reason:
        raise ServingError(f"{backend} cannot run here: {reason}")
    if is_static(folder):
        if backend != "torch-fp32":
            raise ServingError(f"{folder} is a static student (a token table, no transformer): it serves on "
                               f"torch-fp32 only, not {backend}")
        return StaticServer(folder, json.loads((folder / names.STUDENT_CONFIG).read_text()), threads)
    for file in (names.STUDENT_CONFIG, "tokenizer.json", _FILES[backend]):
        if not (folder / file).is_file():
            hint = "export it with `distill export --onnx --int8`" if file.startswith("onnx") else \
                "pass a folder written by `distill export`"
            raise ServingError(f"{folder} has no {file}, which {backend} needs; {hint}")
    config = json.loads((folder / names.STUDENT_CONFIG).read_text())
    if backend.startswith("torch"):
        return TorchServer(folder, config, torch.bfloat16 if backend == "torch-bf16" else torch.float32, threads)
    return OnnxServer(folder, config, _FILES[backend], threads)


def is_static(folder: str | Path) -> bool:
    """Whether an exported folder holds a static student (`students.StaticStudent`: `kind: static`)."""
    path = Path(folder) / names.STUDENT_CONFIG
    return path.is_file() and json.loads(path.read_text()).get("kind") == "static"


class StudentServer:
    """Common to every backend: the student's options and a one-text tokenizer."""

    backend = ""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        self.config, self.folder = config, folder
        self.prefix, self.pooling, self.normalize = config["prefix"], config.get("pooling"), config["normalize"]
        # documents (retrieval candidates) take the student's document prefix where it has one (e5's "passage: ")
        self.document_prefix = self.prefix if config.get("document_prefix") is None else config["document_prefix"]
        self.dims = config.get("dims")  # a 2D-Matryoshka point exported at fewer dimensions: cut, then normalise
        self.tokenizer = AutoTokenizer.from_pretrained(folder)  # batches: padding and truncation per call
        # one text: the Rust tokenizer itself, truncating, never padding (its own copy: settings are per object)
        self.one = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self.one.no_padding()
        self.one.enable_truncation(config["max_seq_length"])

    def ids(self, text: str) -> list[int]:
        return self.one.encode(self.prefix + text).ids

    def query(self, text: str) -> torch.Tensor:
        """The embedding (dim,) float32 of one text."""
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 32, document: bool = False) -> torch.Tensor:
        """Embeddings (len(texts), dim) float32, batched longest first to cut padding; `document`: the texts are
        documents (the document prefix)."""
        prefix = self.document_prefix if document else self.prefix
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out: torch.Tensor | None = None
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([prefix + texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.config["max_seq_length"], return_tensors="np")
            emb = self._batch(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))
            if out is None:
                out = torch.empty(len(texts), emb.shape[-1])
            out[idx] = emb
        return out if out is not None else torch.empty(0, 0)

    def _batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, dim); `mask` None: every token is real (one unpadded text)."""
        if self.pooling == "cls":
            emb = hidden[:, 0]
        elif mask is None:
            emb = hidden.mean(1)
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = emb.float()[..., :self.dims]
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb


class TorchServer(StudentServer):
    """The transformers encoder in torch, weights in the serving dtype (fp32 or bf16)."""

    def __init__(self, folder: Path, config: dict[str, Any], dtype: torch.dtype, threads: int | None) -> None:
        from transformers import AutoModel

        super().__init__(folder, config)
        if threads:
            torch.set_num_threads(threads)
        self.backend = "torch-bf16" if dtype == torch.bfloat16 else "torch-fp32"
        try:  # BERT-like models would build (and run) an untrained pooler the student never uses
            self.model = AutoModel.from_pretrained(folder, dtype=dtype, add_pooling_layer=False).eval()
        except TypeError:
            self.model = AutoModel.from_pretrained(folder, dtype=dtype).eval()

    @torch.inference_mode()
    def query(self, text: str) -> torch.Tensor:
        ids = torch.tensor([self.ids(text)])
        return self._pool(self.model(input_ids=ids).last_hidden_state, None)[0]

    @torch.inference_mode()
    def _batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        return self._pool(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


class OnnxServer(StudentServer):
    """The encoder graph in ONNX Runtime (fp32 or dynamic int8)."""

    def __init__(self, folder: Path, config: dict[str, Any], file: str, threads: int | None) -> None:
        from distill import onnx_backend

        super().__init__(folder, config)
        self.backend = "onnx-int8" if file == names.INT8_FILE else "onnx-fp32"
        self.session = onnx_backend.session(folder / file, threads)
        self.inputs = onnx_backend.input_names(self.tokenizer)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return torch.from_numpy(self.session.run(None, feed)[0])

    def query(self, text: str) -> torch.Tensor:
        ids = np.asarray([self.ids(text)], dtype=np.int64)
        return self._pool(self._run(ids, np.ones_like(ids)), None)[0]

    def _batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        return self._pool(self._run(input_ids, attention_mask), torch.from_numpy(attention_mask))


class StaticServer(StudentServer):
    """A static student: the mean of its tokens' rows of one table (no attention, no transformer), tokenised as
    sentence-transformers' StaticEmbedding does (no special tokens, no truncation)."""

    backend = "torch-fp32"

    def __init__(self, folder: Path, config: dict[str, Any], threads: int | None) -> None:
        from safetensors.torch import load_file

        super().__init__(folder, {**config, "max_seq_length": config.get("max_seq_length", 512)})
        self.one.no_truncation()
        if threads:
            torch.set_num_threads(threads)
        self.table = load_file(str(folder / "model.safetensors"))["embedding.weight"].float()

    def ids(self, text: str) -> list[int]:
        return self.one.encode(self.prefix + text, add_special_tokens=False).ids

    @torch.inference_mode()
    def query(self, text: str) -> torch.Tensor:
        ids = self.ids(text)
        emb = self.table[ids].mean(0) if ids else torch.zeros(self.table.shape[1])
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32, document: bool = False) -> torch.Tensor:
        prefix = self.document_prefix if document else self.prefix
        ids = [self.one.encode(prefix + t, add_special_tokens=False).ids for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        offsets = torch.tensor([0, *np.cumsum([len(row) for row in ids])[:-1]], dtype=torch.long)
        emb = torch.nn.functional.embedding_bag(flat, self.table, offsets, mode="mean")  # empty bag: zeros
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb


class Index:
    """Pre-encoded candidates (N, dim) and the top k of a query by dot product (cosine when normalised)."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.matrix = embeddings.float().contiguous()

    def search(self, query: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) of the k best candidates, best first."""
        scores = self.matrix @ query
        return torch.topk(scores, min(k, len(scores)))
