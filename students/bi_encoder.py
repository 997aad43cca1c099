"""Bi-encoder student: text -> embedding, compared by cosine or by the DSE pair head.

A plain `nn.Module`: it knows nothing of Lightning, teachers or the cache, so what is exported is exactly this.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from distill.backbone_record import RecordsBackbone
from distill.backbones import check_max_length, load_backbone
from distill.names import COSINE, DSE, DSE_HEAD, STUDENT_CONFIG


class DSEHead(nn.Module):
    """MLP([u; v; u*v; |u-v|]) -> score in [0, 1] (Barkan et al., AAAI 2020, "Distilled Sentence Embedding").

    Shapes: u, v (batch, dim) -> (batch,).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        features = torch.cat([u, v, u * v, (u - v).abs()], dim=-1)
        return torch.sigmoid(self.mlp(features).squeeze(-1))


class BiEncoder(RecordsBackbone, nn.Module):
    """A sentence encoder: backbone + pooling + optional normalisation + optional DSE pair head.

    Args:
        backbone: short name (`minilm-l6`), local folder or hub id.
        pooling: `mean` over tokens (masked) or the `cls` token.
        normalize: L2-normalise embeddings (cosine = dot product).
        max_seq_length: tokens per text, truncated beyond.
        prefix: prepended to every input text (e.g. e5's "query: "); saved with the model.
        dse_head: add the DSE pair head, a second scoring mode beside cosine.
        dse_hidden: hidden width of the DSE head (default: the embedding width).
    """

    def __init__(
        self,
        backbone: str = "minilm-l6",
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 128,
        prefix: str = "",
        dse_head: bool = False,
        dse_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"student pooling is {pooling!r}; expected 'mean' or 'cls'")
        self.config = {"pooling": pooling, "normalize": normalize, "max_seq_length": max_seq_length,
                       "prefix": prefix, "dse_head": dse_head, "dse_hidden": dse_hidden}
        try:  # BERT-like models carry an unused pooler; dropping it keeps DDP free of unused parameters
            self.encoder, self.backbone_path = load_backbone(AutoModel, backbone, add_pooling_layer=False)
        except TypeError:
            self.encoder, self.backbone_path = load_backbone(AutoModel, backbone)
        self.encoder.train()  # from_pretrained returns eval mode, which would silently switch dropout off
        check_max_length(self.encoder, max_seq_length, "student max_seq_length")
        dim = self.encoder.config.hidden_size
        self.head = DSEHead(dim, dse_hidden or dim) if dse_head else None
        self.register_load_state_dict_pre_hook(RecordsBackbone._allow_unrecorded)

    def _backbone_parts(self) -> tuple[nn.Module, Any]:
        return self.encoder, self.tokenizer

    @functools.cached_property
    def tokenizer(self) -> Any:
        return AutoTokenizer.from_pretrained(self.backbone_path)

    @property
    def modes(self) -> tuple[str, ...]:
        """Scoring modes this student offers."""
        return (COSINE, DSE) if self.head is not None else (COSINE,)

    def tokenization(self) -> dict[str, Any]:
        """How the datamodule must tokenise for this model (each text apart, with the prefix)."""
        return {"tokenizer": self.backbone_path, "max_length": self.config["max_seq_length"], "joint": False,
                "prefix": self.config["prefix"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeddings (batch, dim) of tokenised texts."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config["pooling"] == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(emb, dim=-1) if self.config["normalize"] else emb

    def scores(self, u: Tensor, v: Tensor) -> dict[str, Tensor]:
        """Pair scores (batch,) in each mode: `cosine` in [-1, 1], `dse` in [0, 1]."""
        out = {COSINE: nn.functional.cosine_similarity(u, v, dim=-1)}
        if self.head is not None:
            out[DSE] = self.head(u, v)
        return out

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32) -> Tensor:
        """Embed texts, (len(texts), dim) float32 on CPU; sorted by length inside to cut padding."""
        tok = self.tokenizer
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = torch.empty(len(texts), self.encoder.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([self.config["prefix"] + texts[i] for i in idx], padding=True, truncation=True,
                      max_length=self.config["max_seq_length"], return_tensors="pt").to(device)
            out[idx] = self(enc["input_ids"], enc["attention_mask"]).float().cpu()
        self.train(was_training)
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        """A folder `from_pretrained` reads back: HF encoder + tokenizer, options JSON, DSE head weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / STUDENT_CONFIG).write_text(json.dumps(self.config, indent=2))
        if self.head is not None:
            save_file(self.head.state_dict(), str(directory / DSE_HEAD))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BiEncoder:
        """Load a folder written by `save_pretrained`."""
        directory = Path(directory)
        if not (directory / STUDENT_CONFIG).is_file():
            raise FileNotFoundError(f"{directory} has no {STUDENT_CONFIG}: not a distill student folder")
        options = json.loads((directory / STUDENT_CONFIG).read_text())
        options.pop("selected_mode", None)  # written by `distill export`; not a constructor option
        student = cls(backbone=str(directory), **options)
        if student.head is not None:
            student.head.load_state_dict(load_file(str(directory / DSE_HEAD)))
        return student
