"""Static student: one vector per token, mean-pooled; no attention, so it embeds at the speed of a table lookup.

The table starts as a transformer's token vectors (model2vec's recipe: each token encoded alone, PCA, a Zipf-rank
SIF weight folded into each row), then is fine-tuned on the cached teacher scores like any student. Its folder is
sentence-transformers' `StaticEmbedding` layout (`tokenizer.json` + `model.safetensors` holding `embedding.weight`),
so `distill export` only adds the module files. A plain `nn.Module`, like `students.BiEncoder`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoTokenizer

from distill.backbone_record import CheckpointError, tokenizer_hash
from distill.backbones import resolve
from distill.names import COSINE, STUDENT_CONFIG
from students.bi_encoder import BiEncoder

STATIC_WEIGHTS = "model.safetensors"  # file and key (`embedding.weight`) of sentence-transformers StaticEmbedding
KIND = "static"  # `kind` in the student config: tells a static student's folder from a bi-encoder's
TOKEN_VECTORS = ("contextual", "input")


def sif_weights(n: int, coefficient: float) -> Tensor:
    """model2vec's SIF weight per token id, `a / (a + p_i)`, with `p_i` Zipf's law on the id's rank (ids of
    WordPiece/BPE vocabularies are roughly in frequency order): frequent tokens count less in a mean.

    Args:
        n: vocabulary size.
        coefficient: `a`; smaller weighs frequent tokens down harder.
    """
    inv_rank = 1.0 / torch.arange(2, n + 2, dtype=torch.float64)
    return coefficient / (coefficient + inv_rank / inv_rank.sum())


def pca(vectors: Tensor, dim: int) -> Tensor:
    """`vectors` (n, width) centred and projected on their first `dim` principal axes, (n, dim) float64; each axis'
    sign is fixed so its largest loading is positive (sklearn's convention), so the result is reproducible."""
    x = vectors.double() - vectors.double().mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:dim]  # (dim, width)
    axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return x @ axes.T


class StaticStudent(nn.Module):
    """A static sentence encoder: the mean of its tokens' vectors (special tokens left out), optionally normalised.

    Args:
        source: the transformer whose token vectors start the table: a short name (`minilm-l6`), a backbone or
            `BiEncoder` folder (a trained student: its pooling is used), or a static student folder (its table is
            loaded as it is; the other options then only describe how it was made).
        dim: table width after PCA (model2vec's default 256); null keeps the source's width (rotated by PCA).
        token_vectors: `contextual` (each token encoded alone by the source, with its special tokens, pooled as
            the student pools: model2vec) or `input` (the source's input embedding rows: no forward pass).
        sif_coefficient: SIF weighting of the rows by Zipf rank (model2vec's 1e-4); null: no weighting.
        normalize: L2-normalise embeddings (cosine = dot product).
        max_seq_length: tokens per text in training data (sentence-transformers' StaticEmbedding never truncates,
            nor does `encode`).
        prefix: prepended to every input text; saved with the model.
        batch_size: tokens encoded per forward pass while building the table.
    """

    def __init__(
        self,
        source: str = "minilm-l6",
        dim: int | None = 256,
        token_vectors: str = "contextual",
        sif_coefficient: float | None = 1e-4,
        normalize: bool = True,
        max_seq_length: int = 512,
        prefix: str = "",
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        key = "model.init_args.student.init_args"
        if token_vectors not in TOKEN_VECTORS:
            raise ValueError(f"{key}.token_vectors is {token_vectors!r}; expected one of {TOKEN_VECTORS}")
        self.config = {"kind": KIND, "dim": dim, "token_vectors": token_vectors, "sif_coefficient": sif_coefficient,
                       "normalize": normalize, "max_seq_length": max_seq_length, "prefix": prefix}
        # a static student folder holds no transformer (no config.json): it is its own tokenizer folder
        self.tokenizer_path = source if _is_static_folder(source) else resolve(source)
        self.tokenizer = _fast_tokenizer(self.tokenizer_path, f"{key}.source")
        self._around = _added_tokens(self.tokenizer)
        if _is_static_folder(self.tokenizer_path):
            table = load_file(str(Path(self.tokenizer_path) / STATIC_WEIGHTS))["embedding.weight"]
        else:
            table = self._distil(self.tokenizer_path, dim, token_vectors, sif_coefficient, batch_size, key)
        self.embedding = nn.Embedding.from_pretrained(table.float().contiguous(), freeze=False)
        # the tokens a tokenizer adds around a text ([CLS], [SEP]) are no part of it: StaticEmbedding never adds them
        added = torch.zeros(len(self.tokenizer), dtype=torch.bool)
        added[[*self._around[0], *self._around[1]]] = True
        self.register_buffer("added", added, persistent=False)

    def _distil(self, path: str, dim: int | None, token_vectors: str, sif: float | None, batch_size: int,
                key: str) -> Tensor:
        source = BiEncoder.from_pretrained(path) if (Path(path) / STUDENT_CONFIG).is_file() else BiEncoder(path)
        source.eval()
        width = source.width
        if dim is not None and not 0 < dim <= width:
            raise ValueError(f"{key}.dim is {dim}, larger than the source's width {width}: set 1..{width}, or null")
        n = len(self.tokenizer)
        with torch.inference_mode():
            if token_vectors == "input":
                vectors = source.encoder.get_input_embeddings().weight[:n].float()
            else:
                before, after = self._around
                ids = torch.tensor([[*before, t, *after] for t in range(n)])  # each token alone, as a text
                vectors = torch.cat([
                    source.pool(source.encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk))
                                .last_hidden_state, torch.ones_like(chunk)).float()
                    for chunk in ids.split(batch_size)])  # (n, width)
        table = pca(vectors, dim or width)
        if sif is not None:
            table = table * sif_weights(n, sif)[:, None]
        return table

    @property
    def modes(self) -> tuple[str, ...]:
        """Scoring modes this student offers."""
        return (COSINE,)

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return self.embedding.embedding_dim

    def tokenization(self) -> dict[str, Any]:
        """How the datamodule must tokenise for this model (each text apart, with the prefix)."""
        return {"tokenizer": self.tokenizer_path, "max_length": self.config["max_seq_length"], "joint": False,
                "prefix": self.config["prefix"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeddings (batch, dim): the mean of the text's token vectors, added special tokens left out."""
        keep = (attention_mask.bool() & ~self.added[input_ids]).unsqueeze(-1).to(self.embedding.weight.dtype)
        emb = (self.embedding(input_ids) * keep).sum(1) / keep.sum(1).clamp(min=1)  # no token: a zero vector
        return nn.functional.normalize(emb, dim=-1) if self.config["normalize"] else emb

    def scores(self, u: Tensor, v: Tensor) -> dict[str, Tensor]:
        """Pair scores (batch,): `cosine` in [-1, 1]."""
        return {COSINE: nn.functional.cosine_similarity(u, v, dim=-1)}

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256, document: bool = False) -> Tensor:
        """Embed texts, (len(texts), dim) float32 on CPU, as sentence-transformers' StaticEmbedding does (no special
        tokens, no truncation). `document` is accepted for the bi-encoder's interface: one prefix for both."""
        device = self.embedding.weight.device
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer([self.config["prefix"] + t for t in texts[start:start + batch_size]],
                                 add_special_tokens=False, padding=True, return_tensors="pt").to(device)
            out[start:start + batch_size] = self(enc["input_ids"], enc["attention_mask"]).float().cpu()
        return out

    @functools.cached_property
    def tokenizer_hash(self) -> str:
        """What the tokenizer does (`distill.backbone_record.tokenizer_hash`), hashed once."""
        return tokenizer_hash(self.tokenizer)

    def get_extra_state(self) -> Tensor:
        # the table's rows are token ids: a checkpoint is only valid with the tokenizer it was trained with
        return torch.frombuffer(bytearray(self.tokenizer_hash.encode()), dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        if state.numel() and bytes(state.tolist()).decode() != self.tokenizer_hash:
            raise CheckpointError(f"the tokenizer of {self.tokenizer_path} has changed since this static student was "
                                  f"trained (its rows are token ids); put the original tokenizer back there")

    def save_pretrained(self, directory: str | Path) -> None:
        """A folder `from_pretrained` (and sentence-transformers' StaticEmbedding) reads back: tokenizer, table,
        options JSON."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        save_file({"embedding.weight": self.embedding.weight.detach().float().cpu().contiguous()},
                  str(directory / STATIC_WEIGHTS))
        (directory / STUDENT_CONFIG).write_text(json.dumps(self.config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> StaticStudent:
        """Load a folder written by `save_pretrained`."""
        directory = Path(directory)
        if not _is_static_folder(str(directory)):
            raise FileNotFoundError(f"{directory} has no {STUDENT_CONFIG} of kind {KIND!r} and {STATIC_WEIGHTS}: "
                                    f"not a static student folder")
        options = json.loads((directory / STUDENT_CONFIG).read_text())
        for written in ("kind", "selected_mode"):  # not constructor options
            options.pop(written, None)
        return cls(source=str(directory), **options)


def _is_static_folder(path: str) -> bool:
    config = Path(path) / STUDENT_CONFIG
    return (config.is_file() and json.loads(config.read_text()).get("kind") == KIND
            and (Path(path) / STATIC_WEIGHTS).is_file())


def _added_tokens(tok: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text's own tokens (BERT: [CLS], [SEP]), read off one text."""
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i:i + len(plain)] == plain:
            return with_special[:i], with_special[i + len(plain):]
    raise ValueError(f"{type(tok).__name__} changes a text's own tokens when it adds special ones; a static student "
                     f"cannot tell them apart")


def _fast_tokenizer(path: str, key: str) -> Any:
    """The folder's fast (Rust) tokenizer; anything else is a one-line error naming `key`."""
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{key} {path} has no tokenizer vocabulary ({reason[:120]}); a static student's rows are "
                         f"its token ids: use a backbone folder that holds its tokenizer (tokenizer.json)") from None
    # transformers 5 builds a tokenizer of special tokens alone for a folder without tokenizer files
    if not set(tok.get_vocab().values()) - set(tok.all_special_ids):
        raise ValueError(f"{key} {path} has no tokenizer vocabulary (no tokenizer files: only special tokens); a "
                         f"static student's rows are its token ids: use a backbone folder that holds its tokenizer "
                         f"(tokenizer.json)")
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{key} {path} has no tokenizer.json (only a slow {type(tok).__name__}); a static student "
                         f"needs a fast tokenizer, as sentence-transformers' StaticEmbedding does: convert it with "
                         f"AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)")
    return tok
