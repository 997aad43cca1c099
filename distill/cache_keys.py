"""The keys of a pair: its `pair_id` (DESIGN.md "Data contracts") and the 64-bit keys a score cache stores.

`make_pair_id` hashes a pair's normalised texts into the id every pair file, cache and report uses. In a shard,
`key` hashes a pair_id and `text_key` a pair's normalised texts; both are vectorised over Arrow string columns (no
Python string per row), and stable: they are stored in shards, so changing `make_pair_id`, `hash64` or
`normalise_arrow` makes every stored id or key wrong (the join would find no pair).

A leaf module: the data reader and the score cache's format both build on it, neither imports the other.
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

CHUNK = 1 << 16  # rows per step: bounds working memory (a few MB), not results

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so every power is invertible mod 2^64 (no byte is ever lost)
# exactly the characters str.isspace() accepts, i.e. what `" ".join(text.split())` in `normalise` collapses
# (tests check this against Python itself)
_ASCII_ODD = r"[\t\n\x0b\x0c\r\x1c-\x1f]|  "
_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]+"


def normalise(text: str) -> str:
    """The text form that `pair_id` hashes: NFC, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def make_pair_id(text_a: str, text_b: str) -> str:
    """Order-sensitive id of a pair: score(a, b) != score(b, a) for a cross-encoder."""
    joined = normalise(text_a) + "\x1f" + normalise(text_b)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:20]


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on 64-bit words that spreads every input bit over the output (0 -> 0)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash_chunk(chunk: pa.Array) -> np.ndarray:
    """The hash of each string: its UTF-8 bytes, zero-padded on the left to whole 8-byte words, are read as
    little-endian words w_k; h = sum_k mix(w_k) * P^(last - k) mod 2^64, then mix(h ^ length * C).

    Mixing each word before the polynomial keeps a difference in any byte from cancelling out (a plain polynomial
    over words only spreads a word's high bytes into h's high bits); leading zero words add nothing, so a string
    hashes alike however wide the matrix it is read in.
    """
    if chunk.null_count:
        raise ValueError("null strings cannot be hashed")
    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        chunk = chunk.cast(pa.large_string())
    n = len(chunk)
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    _, offsets_buf, data_buf = chunk.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width)[chunk.offset:chunk.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    h = np.zeros(n, np.uint64)
    # rows in slices of ~1 MB of text; within one, strings are read right-aligned in (rows, 8 * k bytes)
    # matrices, grouped by k so that short strings are not padded to the longest
    i = 0
    while i < n:
        j = min(max(int(np.searchsorted(offsets, offsets[i] + (1 << 20), side="right")) - 1, i + 1), n)
        lo, hi = int(offsets[i]), int(offsets[j])
        top = int(lengths[i:j].max()) if j > i else 0
        padded = np.zeros(top + 8 + hi - lo, np.uint8)  # zeros in front: a window may start before the slice
        padded[top + 8:] = data[lo:hi]
        group = (lengths[i:j] + 7) // 8
        for k in np.unique(group):
            rows = np.flatnonzero(group == k)
            span = 8 * int(k)
            if span == 0:
                continue
            # window r covers the span bytes that end where string r ends; bytes before its start are zeroed
            ends = offsets[i + 1:j + 1][rows] - lo + top + 8
            windows = np.lib.stride_tricks.sliding_window_view(padded, span)[ends - span]
            windows *= np.arange(span) >= (span - lengths[i:j][rows])[:, None]
            words = windows.view("<u8")  # (rows, span / 8)
            acc = np.zeros(len(rows), np.uint64)
            for c in range(words.shape[1]):
                acc = acc * _P + _mix(words[:, c].astype(np.uint64))
            h[i + rows] = acc
        i = j
    z = _mix(h ^ (lengths.astype(np.uint64) * np.uint64(0xFF51AFD7ED558CCD)))
    z[z == 0] = 1  # 0 means "no text key recorded" in a shard
    return z.view(np.int64)


def hash64(strings: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Stable 64-bit hash (int64) of each string's UTF-8 bytes, vectorised; the `key` column of a shard."""
    if isinstance(strings, list):
        strings = pa.array(strings, pa.string())
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    parts = [_hash_chunk(c) for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def normalise_arrow(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`normalise` (NFC, whitespace runs collapsed to one space, stripped) on a whole Arrow column."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    # the regex replacement costs ~1.5 us a text: run it only on texts it can change, i.e. non-ASCII ones and
    # ASCII ones holding a whitespace other than a single space (an ASCII text is already NFC)
    odd = pc.or_(pc.invert(pc.string_is_ascii(texts)), pc.match_substring_regex(texts, _ASCII_ODD))
    if pc.any(odd).as_py():
        picked = texts.filter(odd)
        fixed = pc.replace_substring_regex(pc.utf8_normalize(picked, "NFC"), _SPACE, " ")
        texts = pc.replace_with_mask(texts, odd, fixed.cast(texts.type))
    return pc.utf8_trim(texts, " ")


def text_keys(text_a: pa.Array | pa.ChunkedArray | list[str], text_b: pa.Array | pa.ChunkedArray | list[str]) \
        -> np.ndarray:
    """64-bit hash of `normalise(text_a) + "\\x1f" + normalise(text_b)` per pair: a shard's `text_key` column."""
    a, b = (pa.array(t, pa.string()) if isinstance(t, list) else t for t in (text_a, text_b))
    return hash64(pc.binary_join_element_wise(normalise_arrow(a), normalise_arrow(b), "\x1f"))


def text_keys_of(rows: Dataset, columns: tuple[str, str] = ("text_a", "text_b")) -> np.ndarray:
    """`text_keys` of a Dataset's pairs, read chunk by chunk so no Python string is made per row."""
    view = rows.with_format("arrow", columns=list(columns))
    return np.concatenate([text_keys(*(view[i:i + CHUNK].column(c) for c in columns))
                           for i in range(0, len(rows), CHUNK)] or [np.zeros(0, np.int64)])
