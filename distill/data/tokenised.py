"""The tokenised-row cache: pair rows tokenised once with a fingerprinted `Dataset.map`, kept as Arrow files.

A file is named by the rows' content (`fingerprint`), the tokenizer's behaviour and the tokenisation options
(`tokenised_cache_file`), so `prepare_data` on rank 0 writes it and `setup` on every rank reads it back. Rows stay
unpadded: the collators pad per batch (`distill.data.batches`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset
from transformers import AutoTokenizer

from distill.backbone_record import tokenizer_hash
from distill.backbones import cache_root


def fingerprint(rows: Dataset) -> str:
    """Content hash of pair rows (ids, texts and labels where present): names the data in the score cache,
    so edited texts under kept user ids still count as other data. Streamed in batches (10^7 rows fit)."""
    h = hashlib.sha256()
    columns = [c for c in ("pair_id", "text_a", "text_b", "label") if c in rows.column_names]
    for batch in rows.select_columns(columns).iter(batch_size=65536):
        for row in zip(*(batch[c] for c in columns)):
            h.update("\x1f".join(map(str, row)).encode("utf-8") + b"\n")
    return h.hexdigest()


def _column_hash(rows: Dataset, column: str) -> str:
    """Content hash of one column, streamed (numbers hashed as their float64 bytes)."""
    h = hashlib.sha256()
    for batch in rows.select_columns([column]).iter(batch_size=65536):
        values = batch[column]
        try:
            h.update(np.asarray(values, dtype=np.float64).tobytes())
        except (TypeError, ValueError):
            h.update(json.dumps(values, default=str).encode())
    return h.hexdigest()


@lru_cache(maxsize=8)
def load_tokenizer(path: str):  # noqa: ANN201 - transformers' tokenizer classes
    return AutoTokenizer.from_pretrained(path)


def tokenizer_fingerprint(path: str) -> str:
    """Hash of what a tokenizer does (vocabulary, normaliser, model), not of where it lives."""
    return tokenizer_hash(load_tokenizer(path))


def tokenised_cache_file(rows: Dataset, spec: dict[str, Any], split: str) -> Path:
    """Where the tokenised rows live on disk: named by the data, the tokenizer and the tokenisation options."""
    options = {k: v for k, v in spec.items() if k != "tokenizer"}
    # columns beyond the pair contract (e.g. a group) are stored in the file too: their values name it as well
    extra = sorted(set(rows.column_names) - {"pair_id", "text_a", "text_b", "label", "gold"})
    if extra:
        options["extra"] = hashlib.sha256(json.dumps([list(rows[c]) for c in extra]).encode()).hexdigest()
    if "gold" in rows.column_names:  # gold depends on label_range, which the label fingerprint cannot see
        options["gold"] = _column_hash(rows, "gold")
    key = hashlib.sha256(f"{fingerprint(rows)}|{tokenizer_fingerprint(spec['tokenizer'])}|"
                         f"{json.dumps(options, sort_keys=True)}".encode()).hexdigest()[:24]
    return cache_root() / "tokenized" / f"{split}-{key}.arrow"


def drop_if_unreadable(cache_file: Path, n_rows: int) -> None:
    """A tokenised-row cache file cut short (a kill mid-write, a full disk) is re-made, with a warning naming it,
    instead of breaking every later run on the same data with an Arrow traceback."""
    if not cache_file.is_file():
        return
    try:
        ok = Dataset.from_file(str(cache_file)).num_rows == n_rows
    except Exception:  # noqa: BLE001 - Arrow raises several types for a truncated file
        ok = False
    if not ok:
        warnings.warn(f"{cache_file}: unreadable or incomplete tokenised-row cache; tokenising again", stacklevel=3)
        cache_file.unlink()


def tokenize(batch: dict[str, list], tokenizer: str, max_length: int, joint: bool, prefix: str = "",
             document_prefix: str | None = None) -> dict:
    """Tokenise pairs jointly (cross-encoder) or each side apart (bi-encoder), unpadded.

    `text_a` gets `prefix`; `text_b` gets `document_prefix` where the data module says its texts are documents
    (retrieval: e5's "passage: "), else `prefix` too (a symmetric task such as STS).

    Module-level with plain `fn_kwargs` so `Dataset.map` fingerprints it stably.
    """
    tok = load_tokenizer(tokenizer)
    prefixes = {"a": prefix, "b": prefix if document_prefix is None else document_prefix}
    if joint:
        enc = tok([prefixes["a"] + t for t in batch["text_a"]], [prefixes["b"] + t for t in batch["text_b"]],
                  truncation=True,
                  max_length=max_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    out = {}
    for side in ("a", "b"):
        if f"text_{side}" not in batch:
            continue
        enc = tok([prefixes[side] + t for t in batch[f"text_{side}"]], truncation=True, max_length=max_length)
        out[f"{side}_input_ids"] = enc["input_ids"]
        out[f"{side}_attention_mask"] = enc["attention_mask"]
    return out


def warn_truncated(rows: Dataset, max_length: int, name: str) -> None:
    """One warning that counts the rows cut at max_length (long texts are not an error)."""
    columns = [c for c in ("input_ids", "a_input_ids", "b_input_ids") if c in rows.column_names]
    if not columns:
        return
    cut = int((np.stack([token_lengths(rows, c) for c in columns]).max(axis=0) >= max_length).sum())
    if cut:
        warnings.warn(f"{name}: {cut} of {len(rows)} rows reach max_length={max_length} tokens and were truncated; "
                      f"raise the model's max_length (max_seq_length for students) to keep them whole", stacklevel=2)


def token_lengths(rows: Dataset, column: str) -> np.ndarray:
    """Length of every token list in `column`, read from Arrow (no per-row Python lists: 10^7 rows fit)."""
    return pc.list_value_length(rows.data.column(column)).to_numpy(zero_copy_only=False)


def pair_lengths(rows: Dataset) -> np.ndarray:
    """Each row's longest token list: `input_ids` (a joint pair), or the longer of `a_input_ids`/`b_input_ids`
    (`PairCollator` pads both sides to one width, so the longer side sets what the row costs a batch)."""
    columns = [c for c in ("input_ids", "a_input_ids", "b_input_ids") if c in rows.column_names]
    if not columns:
        raise ValueError(f"no token column in {rows.column_names}; expected input_ids or a_input_ids/b_input_ids")
    return np.max(np.stack([token_lengths(rows, c) for c in columns]), axis=0)
