"""Bi-encoder student: text -> embedding, compared by cosine or by the DSE pair head.

A plain `nn.Module`: it knows nothing of Lightning, teachers or the cache, so what is exported is exactly this.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
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
        document_prefix: prepended instead to documents (retrieval candidates: e5's "passage: "), where a data
            module or caller says its texts are documents; null: documents take `prefix` too. Exported as the
            sentence-transformers prompts `{"query": prefix, "document": document_prefix}`.
        dse_head: add the DSE pair head, a second scoring mode beside cosine.
        dse_hidden: hidden width of the DSE head (default: the embedding width).
        keep_layers: build a shallower student from these encoder layers of the backbone (0-based, increasing;
            e.g. `[0, 2, 4]` of a 6-layer model), distilled like any student; default: every layer.
        dims: embed at this many leading dimensions of the pooled vector (renormalised when `normalize`): a
            Matryoshka point of a student trained with `distill.losses.Matryoshka2D`; default: the full width.
    """

    def __init__(
        self,
        backbone: str = "minilm-l6",
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 128,
        prefix: str = "",
        document_prefix: str | None = None,
        dse_head: bool = False,
        dse_hidden: int | None = None,
        keep_layers: list[int] | None = None,
        dims: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"student pooling is {pooling!r}; expected 'mean' or 'cls'")
        self.config = {"pooling": pooling, "normalize": normalize, "max_seq_length": max_seq_length,
                       "prefix": prefix, "document_prefix": document_prefix, "dse_head": dse_head,
                       "dse_hidden": dse_hidden,
                       "keep_layers": None if keep_layers is None else [int(i) for i in keep_layers], "dims": dims}
        try:  # BERT-like models carry an unused pooler; dropping it keeps DDP free of unused parameters
            self.encoder, self.backbone_path = load_backbone(AutoModel, backbone, add_pooling_layer=False)
        except TypeError:
            self.encoder, self.backbone_path = load_backbone(AutoModel, backbone)
        self.encoder.train()  # from_pretrained returns eval mode, which would silently switch dropout off
        check_max_length(self.encoder, max_seq_length, "student max_seq_length")
        if keep_layers is not None:
            keep_encoder_layers(self.encoder, keep_layers, "model.init_args.student.init_args.keep_layers")
        width = self.encoder.config.hidden_size
        if dims is not None and not 0 < dims <= width:
            raise ValueError(f"student dims is {dims}, beyond the embedding width {width}: set "
                             f"model.init_args.student.init_args.dims to 1..{width}, or null for the full width")
        dim = dims or width
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
        """How the datamodule must tokenise for this model (each text apart, with the prefixes)."""
        return {"tokenizer": self.backbone_path, "max_length": self.config["max_seq_length"], "joint": False,
                "prefix": self.config["prefix"], "document_prefix": self.config.get("document_prefix")}

    def prefix_of(self, document: bool) -> str:
        """The prefix of a query, or of a document (its own where set, else the query's)."""
        own = self.config.get("document_prefix")
        return own if document and own is not None else self.config["prefix"]

    @property
    def depth(self) -> int:
        """Number of encoder layers (after `keep_layers`)."""
        return self.encoder.config.num_hidden_layers

    @property
    def width(self) -> int:
        """Width of the pooled vector before any `dims` truncation."""
        return self.encoder.config.hidden_size

    @property
    def dim(self) -> int:
        """Width of the embeddings this student returns."""
        return self.config.get("dims") or self.width

    def pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The student's pooling of token states (batch, seq, width) -> (batch, width); not normalised."""
        if self.config["pooling"] == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def _finish(self, pooled: Tensor, dims: int | None) -> Tensor:
        # truncating before normalising keeps a Matryoshka point's vectors unit length, as at training
        emb = pooled if dims is None else pooled[:, :dims]
        return nn.functional.normalize(emb, dim=-1) if self.config["normalize"] else emb

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeddings (batch, dim) of tokenised texts."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._finish(self.pool(hidden, attention_mask), self.config.get("dims"))

    def embed_points(self, input_ids: Tensor, attention_mask: Tensor,
                     points: Sequence[tuple[int, int]]) -> tuple[Tensor, dict[tuple[int, int], Tensor]]:
        """The embeddings (batch, dim) and, from the same forward pass, those at each (layers, dims) point: the
        output of encoder layer `layers` (1-based), pooled, its first `dims` dimensions, renormalised.

        Args:
            input_ids, attention_mask: tokenised texts (batch, seq).
            points: resolved (layers, dims) pairs, 1 <= layers <= depth, 1 <= dims <= width.
        """
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states  # (embeddings, layer 1, ..., layer depth), each (batch, seq, width)
        pooled: dict[int, Tensor] = {}
        at = {}
        for layers, dims in points:
            if layers not in pooled:
                pooled[layers] = self.pool(states[layers], attention_mask)
            at[(layers, dims)] = self._finish(pooled[layers], dims)
        full = self._finish(self.pool(out.last_hidden_state, attention_mask), self.config.get("dims"))
        return full, at

    def at_point(self, layers: int, dims: int) -> BiEncoder:
        """A copy of this student that embeds at (layers, dims): its first `layers` encoder layers, `dims` leading
        dimensions, renormalised; without the DSE head, which was trained on the full embedding only."""
        if not (1 <= layers <= self.depth and 1 <= dims <= self.width):
            raise ValueError(f"point ({layers}, {dims}) is outside this student (1..{self.depth} layers, "
                             f"1..{self.width} dims)")
        head, self.head = self.head, None  # not copied: deepcopy would share nothing but cost the head's memory
        try:
            point = copy.deepcopy(self)
        finally:
            self.head = head
        if layers < self.depth:
            keep_encoder_layers(point.encoder, list(range(layers)), "layers")
        kept = self.config.get("keep_layers") or list(range(self.depth))
        point.config = {**self.config, "keep_layers": kept[:layers], "dims": None if dims == self.width else dims,
                        "dse_head": False, "dse_hidden": None}
        point.__dict__.pop("backbone_fingerprint", None)  # the copy's encoder is not the backbone's any more
        return point

    def scores(self, u: Tensor, v: Tensor) -> dict[str, Tensor]:
        """Pair scores (batch,) in each mode: `cosine` in [-1, 1], `dse` in [0, 1]."""
        out = {COSINE: nn.functional.cosine_similarity(u, v, dim=-1)}
        if self.head is not None:
            out[DSE] = self.head(u, v)
        return out

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32, document: bool = False) -> Tensor:
        """Embed texts, (len(texts), dim) float32 on CPU; sorted by length inside to cut padding. `document`:
        the texts are documents (the document prefix)."""
        tok = self.tokenizer
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([self.prefix_of(document) + texts[i] for i in idx], padding=True, truncation=True,
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
        # the folder's encoder holds only the kept layers already (its config.json says how many); the list stays
        # in the options file as a record of which backbone layers they were
        options["keep_layers"] = None
        student = cls(backbone=str(directory), **options)
        if student.head is not None:
            student.head.load_state_dict(load_file(str(directory / DSE_HEAD)))
        return student


def keep_encoder_layers(encoder: nn.Module, keep: list[int], key: str) -> None:
    """Keep only encoder layers `keep` (0-based, increasing), in place; the config's layer count follows, so
    `save_pretrained` writes a folder `AutoModel` loads as a shallower model of the same family.

    Args:
        encoder: a transformers encoder whose layers are one `nn.ModuleList` of `config.num_hidden_layers` blocks.
        keep: the layer indices to keep.
        key: the config key named in errors.
    """
    depth = encoder.config.num_hidden_layers
    problems = []
    if not keep:
        problems.append("is empty")
    elif any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth for i in keep):
        problems.append(f"names layers outside 0..{depth - 1}")
    elif any(b <= a for a, b in zip(keep, keep[1:])):
        problems.append("is not strictly increasing")
    if problems:
        raise ValueError(f"{key} {list(keep)} {' and '.join(problems)}: the backbone has {depth} layers; name "
                         f"some of 0..{depth - 1} in increasing order, or leave it unset for all of them")
    parent, name = _layer_list(encoder)
    layers = getattr(parent, name)
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    encoder.config.num_hidden_layers = len(keep)
    if isinstance(getattr(encoder.config, "layer_types", None), list):  # per-layer attention kinds (newer models)
        encoder.config.layer_types = [encoder.config.layer_types[i] for i in keep]


def _layer_list(encoder: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the `nn.ModuleList` holding the transformer blocks: `encoder.layer` in
    BERT, XLM-R and MPNet, `transformer.layer` in DistilBERT; found by length rather than by family name."""
    depth = encoder.config.num_hidden_layers
    for _, parent in encoder.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == depth:
                return parent, name
    raise ValueError(f"{type(encoder).__name__} has no list of {depth} layers to keep a subset of; keep_layers "
                     f"works with BERT-like encoders: leave it unset for this backbone")
