"""64-bit keys of a score cache: `key` hashes a pair_id, `text_key` a pair's normalised texts.

Both are vectorised over Arrow string columns (no Python string per row), and stable: they are stored in shards,
so changing `hash64` or `normalise_arrow` makes every stored key wrong (the join would find no pair).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

CHUNK = 1 << 18  # rows per step: bounds working memory, not results

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so every power is invertible mod 2^64 (no byte is ever lost)
# exactly the characters str.isspace() accepts, i.e. what `" ".join(text.split())` in data.normalise collapses
# (tests check this against Python itself)
_ASCII_ODD = r"[\t\n\x0b\x0c\r\x1c-\x1f]|  "
_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]+"


def _mix(h: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser spreads the polynomial's low-bit structure over all 64 bits; the length is mixed in
    # so that strings of different lengths do not share a polynomial by accident
    z = h ^ (lengths.astype(np.uint64) * np.uint64(0xFF51AFD7ED558CCD))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    z[z == 0] = 1  # 0 means "no text key recorded" in a shard
    return z.view(np.int64)


def _hash_chunk(chunk: pa.Array) -> np.ndarray:
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
    if n and (lengths == lengths[0]).all():
        # fixed width (e.g. 20-hex-char pair ids): Horner over the columns of an (n, width) byte matrix
        matrix = data[offsets[0]:offsets[-1]].reshape(n, int(lengths[0]))
        for j in range(matrix.shape[1]):
            h = h * _P + (matrix[:, j].astype(np.uint64) + np.uint64(1))
        return _mix(h, lengths)
    # variable width: the same polynomial, sum_j (byte_j + 1) * P^(len - 1 - j), in slices of ~1 MB of text
    step_bytes, i = 1 << 20, 0
    while i < n:
        j = max(int(np.searchsorted(offsets, offsets[i] + step_bytes, side="right")) - 1, i + 1)
        j = min(j, n)
        lo, hi, lens = offsets[i], offsets[j], lengths[i:j]
        if hi > lo:
            ends = np.repeat(offsets[i + 1:j + 1], lens)
            from_end = ends - 1 - np.arange(lo, hi)
            powers = _powers(int(lens.max()))
            terms = (data[lo:hi].astype(np.uint64) + np.uint64(1)) * powers[from_end]
            nonempty = lens > 0
            h[i:j][nonempty] = np.add.reduceat(terms, (offsets[i:j] - lo)[nonempty])
        i = j
    return _mix(h, lengths)


_POWERS = np.ones(1, np.uint64)


def _powers(n: int) -> np.ndarray:
    global _POWERS
    if len(_POWERS) < n:
        _POWERS = np.concatenate([[np.uint64(1)], np.cumprod(np.full(2 * n, _P, np.uint64))]).astype(np.uint64)
    return _POWERS


def hash64(strings: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Stable 64-bit hash (int64) of each string's UTF-8 bytes, vectorised; the `key` column of a shard."""
    if isinstance(strings, list):
        strings = pa.array(strings, pa.string())
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    parts = [_hash_chunk(c) for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def normalise_arrow(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`distill.data.normalise` (NFC, whitespace runs collapsed to one space, stripped) on a whole Arrow column."""
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
