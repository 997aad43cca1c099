"""Reading a score cache back: `ScoreCache` and `join_caches`, built for 10^7-10^8 pairs.

The format it reads (manifest, shards, transforms) is `distill.score_cache`'s.

The join never holds a Python object per pair: shards are read as Arrow (only the needed columns), each
pair_id becomes a 64-bit key (`hash64`; new shards store it as `key`, older ones get it computed here), the
keys are sorted once and the training rows' ids are looked up chunk by chunk (`ScoreIndex.find`). What
stays in memory is about 17 bytes per cached pair (key, score, text key) plus the new float32 `score` column.

New shards also store `text_key`, the 64-bit hash of the pair's normalised texts, so that a cache made for
edited texts under user-supplied ids is refused instead of silently reused (0 = not recorded: older shards).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset

from distill.cache_keys import CHUNK, hash64, text_keys
from distill.names import MANIFEST
from distill.score_cache import CacheError, apply_transform, read_manifest

_SIGN = np.uint64(1 << 63)  # int64 order is uint64 order with the top bit flipped


class ScoreCache:
    """A complete score cache directory, read back as targets on a known scale."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise CacheError(f"{self.directory} is not a score cache (no {MANIFEST}); run `distill cache` first or "
                             f"fix data.init_args.cache_dir")
        self.manifest = read_manifest(path)
        if not self.manifest.get("complete"):
            raise CacheError(f"{path}: the cache is incomplete (interrupted run); re-run `distill cache` to finish it")
        self.keys_trusted: bool | None = None  # whether its shards' stored `key` columns are this hash's

    def shards(self) -> list[tuple[Path, int]]:
        return [(self.directory / s["file"], int(s["rows"])) for s in self.manifest["shards"]]

    def read_shard(self, path: Path, columns: tuple[str, ...] = ()) -> tuple[pa.Table, str]:
        """One verified shard as Arrow: `key` (computed for older shards), the score column, `text_key` if
        stored, and `columns`; returns the table and the score column's name."""
        try:
            blob = path.read_bytes()
        except OSError:
            blob = None
        expected = next(s["sha256"] for s in self.manifest["shards"] if s["file"] == path.name)
        if blob is None or hashlib.sha256(blob).hexdigest() != expected:
            raise CacheError(f"{path}: missing or its sha256 differs from the manifest (corrupt shard); "
                             f"re-run `distill cache` to recompute it")
        shard = pq.ParquetFile(pa.BufferReader(blob))
        schema = shard.schema_arrow
        kind = schema.field("pair_id").type if "pair_id" in schema.names else None
        if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise CacheError(f"{path}: column pair_id is {kind or 'missing'}, expected strings; this shard was not "
                             f"written by `distill cache`: re-run `distill cache --overwrite` on the data")
        score = "score" if "score" in schema.names else "scores"
        stored = [c for c in ("key", "text_key") if c in schema.names and self.keys_trusted is not False]
        # stored keys are checked once per cache, on its first shard read: keys written by another hash (or
        # another tool) would otherwise make every pair look absent; then they are recomputed for every shard
        check = "key" in stored and self.keys_trusted is None
        wanted = [score, *stored, *(c for c in columns if c not in stored)]
        if ("key" not in stored or check) and "pair_id" not in wanted:
            wanted.append("pair_id")
        table = shard.read(columns=wanted, use_threads=False)  # threads cost more than they save per shard
        if check:
            self.keys_trusted = bool((table.column("key").to_numpy() == hash64(table.column("pair_id"))).all())
            if not self.keys_trusted:  # and its text keys come from the same other hash: unusable too
                table = table.drop_columns(["key", *(["text_key"] if "text_key" in stored else [])])
        if "key" not in table.column_names:
            table = table.append_column("key", pa.array(hash64(table.column("pair_id"))))
        return table, score

    def scores(self) -> dict[str, float | list[float]]:
        """pair_id -> transformed teacher score (a dict: for small caches and tests; training uses the join)."""
        out: dict[str, Any] = {}
        for path, _ in self.shards():
            table, column = self.read_shard(path, ("pair_id",))
            out.update(zip(table.column("pair_id").to_pylist(), self.transformed(table.column(column)).tolist()))
        return out

    def transformed(self, column: pa.ChunkedArray) -> np.ndarray:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            width = len(column[0]) if len(column) else 0
            if len(flat) != width * len(column):
                raise CacheError(f"{self.directory}: multi-class `scores` of different lengths; re-run `distill "
                                 f"cache --overwrite`")
            raw = flat.reshape(len(column), width)
        else:
            raw = column.to_numpy().astype(np.float32, copy=False)
        teacher, data = self.manifest["teacher"], self.manifest["data"]
        return apply_transform(raw, teacher["score_transform"], data.get("label_range"))

    def join(self, rows: Dataset) -> Dataset:
        """Add a `score` column to `rows`, looked up by `pivot_id` where present, else by `pair_id`."""
        return join_caches([self], rows)


def join_caches(caches: list[ScoreCache], rows: Dataset) -> Dataset:
    """Add a float32 `score` column (a list of floats for multi-class teachers) from one or several caches
    (e.g. gold pairs' and mined silver pairs' caches), joined on `pivot_id` where present, else `pair_id`.

    Raises:
        CacheError: some rows have a score in none of the caches; a pair's texts differ from those its cache
            scored (a stale cache under user-supplied ids); two caches hold one pair id; a shard is corrupt or
            foreign. Each is one line naming the id, the cache and the fix.
    """
    return ScoreIndex(caches).join(rows)


def _low32(text_key: np.ndarray) -> np.ndarray:
    low = (text_key.view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    low[(low == 0) & (text_key != 0)] = 1  # 0 stays "not recorded"
    return low


class ScoreIndex:
    """Every cached pair's key, transformed score and text key, sorted by key (about 17 bytes per pair)."""

    def __init__(self, caches: list[ScoreCache]) -> None:
        self.caches = caches
        self.shards = [(c, path, n) for c in range(len(caches)) for path, n in caches[c].shards()]
        self.starts = np.cumsum([0] + [n for _, _, n in self.shards])  # shard -> first position
        self.cache_starts = np.cumsum([0] + [sum(n for _, n in c.shards()) for c in caches])  # cache -> first
        total = int(self.starts[-1])
        # text keys are kept as their low 32 bits: enough to notice edited texts (a stale row escapes with
        # probability 2^-32), at half the memory
        keys, texts = np.empty(total, np.int64), np.zeros(total, np.uint32)
        scores: np.ndarray | None = None
        self.unverified: set[int] = set()
        for (c, path, n), start in zip(self.shards, self.starts):
            table, column = caches[c].read_shard(path)
            if table.num_rows != n:
                raise CacheError(f"{path}: {table.num_rows} rows but the manifest lists {n}; re-run `distill cache "
                                 f"--overwrite`")
            values = caches[c].transformed(table.column(column))
            if scores is None:
                scores = np.empty((total, *values.shape[1:]), np.float32)
            elif values.shape[1:] != scores.shape[1:]:
                raise CacheError(f"{caches[c].directory} holds {values.shape[1:] or 'single'} scores per pair but "
                                 f"{caches[0].directory} {scores.shape[1:] or 'single'}; list caches of one teacher "
                                 f"in data.init_args.cache_dir")
            keys[start:start + n] = table.column("key").to_numpy()
            scores[start:start + n] = values
            if "text_key" in table.column_names:
                texts[start:start + n] = _low32(table.column("text_key").to_numpy())
            else:
                self.unverified.add(c)
        scores = np.empty((0,), np.float32) if scores is None else scores
        # sort once, then drop each unsorted array as soon as its sorted copy exists: the peak is ~28 bytes a pair
        order = np.argsort(keys)
        order = order.astype(np.int32) if total < 2**31 else order
        keys = keys[order]
        same = np.flatnonzero(keys[1:] == keys[:-1])
        if same.size:
            self._check_duplicates(keys, order, same)
        self.keys = keys
        self._directory()
        self.scores = scores[order]
        del scores
        self.texts = texts[order]
        del texts
        # which cache each sorted pair came from, for naming it in errors (one byte a pair, only if several)
        self.cache_of = None if len(caches) == 1 else np.concatenate(
            [self._cache_at(order[i:i + CHUNK]).astype(np.uint8 if len(caches) < 256 else np.uint16)
             for i in range(0, len(order), CHUNK)] or [[]])

    def _directory(self) -> None:
        # keys are uniform 64-bit hashes: their top bits split the sorted keys into buckets of ~4, so a lookup is
        # a few probes within one bucket (2 cache misses) instead of a binary search over all of them (~24),
        # which keeps the time per pair flat from 10^6 to 10^8 pairs; ~1 byte a pair
        n = len(self.keys)
        self.bits = max(1, int(np.log2(max(n, 2))) - 2)
        first = (np.arange(2 ** self.bits + 1, dtype=np.uint64) << np.uint64(64 - self.bits)) ^ _SIGN
        bounds = np.searchsorted(self.keys, first[:-1].view(np.int64))
        self.bucket = np.append(bounds, n).astype(np.int32 if n < 2**31 else np.int64)
        self.steps = int(np.ceil(np.log2(int(np.diff(self.bucket).max(initial=0)) + 1)))

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """Position of each wanted key in the sorted keys (the last of equal ones: the latest row), or of a
        neighbour where it is absent (compare `keys[pos]`)."""
        b = ((wanted.view(np.uint64) ^ _SIGN) >> np.uint64(64 - self.bits)).astype(np.int64)
        lo, hi = self.bucket[b].astype(np.int64), self.bucket[b + 1].astype(np.int64)
        last = max(len(self.keys) - 1, 0)
        for _ in range(self.steps):  # branch-free binary search for the first key > wanted within each bucket
            mid = (lo + hi) >> 1
            right = (mid < hi) & (self.keys[np.minimum(mid, last)] <= wanted)
            lo, hi = np.where(right, mid + 1, lo), np.where(right, hi, mid)
        return np.maximum(lo - 1, 0)

    def _cache_at(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cache_starts, positions, side="right") - 1

    def _ids(self, positions: np.ndarray) -> list[str]:
        """The string pair_ids at some positions (re-read from their shards: only for the rare errors)."""
        shard_of = np.searchsorted(self.starts, positions, side="right") - 1
        out: dict[int, str] = {}
        for k in np.unique(shard_of):
            c, path, _ = self.shards[k]
            ids = self.caches[c].read_shard(path, ("pair_id",))[0].column("pair_id")
            for p in positions[shard_of == k]:
                out[int(p)] = ids[int(p - self.starts[k])].as_py()
        return [out[int(p)] for p in positions]

    def _check_duplicates(self, keys: np.ndarray, order: np.ndarray, same: np.ndarray) -> None:
        first, second = order[same], order[same + 1]
        c1, c2 = self._cache_at(first), self._cache_at(second)
        across = np.flatnonzero(c1 != c2)
        if across.size:
            i = across[0]
            one, two = self._ids(np.array([first[i], second[i]]))
            a, b = self.caches[c1[i]].directory, self.caches[c2[i]].directory
            if one == two:
                raise CacheError(f"pair_id {one!r} is in both {a} and {b}, which would override each other; list "
                                 f"each pair in one cache only (drop one from data.init_args.cache_dir or re-run "
                                 f"`distill cache` on disjoint data)")
            raise CacheError(f"pair_ids {one!r} ({a}) and {two!r} ({b}) share one 64-bit key; rename one (id_column) "
                             f"or drop id_column so ids hash the texts")
        ids = self._ids(np.concatenate([first, second]))
        for i in range(len(first)):
            if ids[i] != ids[len(first) + i]:
                raise CacheError(f"{self.caches[c1[i]].directory}: pair_ids {ids[i]!r} and {ids[len(first) + i]!r} "
                                 f"share one 64-bit key; rename one (id_column) or drop id_column so ids hash texts")
        # one pair listed twice in a cache (read_pairs allows a repeated id with the same texts): the later row
        # wins, as in a dict; order each run of equal keys by position, since the lookup takes a run's last
        runs = np.unique(np.concatenate([same, same + 1]))
        run_id = np.cumsum(np.r_[True, keys[runs[1:]] != keys[runs[:-1]]])
        order[runs] = order[runs][np.lexsort((order[runs], run_id))]

    def join(self, rows: Dataset) -> Dataset:
        """`rows` with the `score` column; see `join_caches`."""
        key = "pivot_id" if "pivot_id" in rows.column_names else "pair_id"
        # a pivot row was scored as its English source pair, so that is what the cache's text key hashes
        pair = ("src_a", "src_b") if key == "pivot_id" else ("text_a", "text_b")
        verify = set(pair) <= set(rows.column_names) and len(self.unverified) < len(self.caches)
        for c in sorted(self.unverified):
            if set(pair) <= set(rows.column_names):
                warn_unverified(self.caches[c])
        view = rows.with_format("arrow", columns=[key, *(pair if verify else ())])
        n = len(rows)
        out = np.empty((n, *self.scores.shape[1:]), np.float32)
        missing, first_missing, stale, first_stale = 0, -1, 0, (-1, 0)
        for start in range(0, n, CHUNK):
            table = view[start:start + CHUNK]
            wanted = hash64(table.column(key))
            if not len(self.keys):
                first_missing, missing = (start if first_missing < 0 else first_missing), missing + len(wanted)
                continue
            # looked up in key order, so that neighbouring lookups share cache lines and pages of the index;
            # results go back to row order through `order` (a permutation of this chunk only)
            order = np.argsort(wanted)
            at = self.find(wanted[order])
            pos, found, cached = np.empty_like(at), np.empty(len(at), bool), np.empty(len(at), np.uint32)
            pos[order], found[order] = at, self.keys[at] == wanted[order]
            if not found.all():
                first_missing = start + int(np.argmin(found)) if first_missing < 0 else first_missing
                missing += int((~found).sum())
            out[start:start + len(wanted)][order] = self.scores[at]
            if verify:
                # only rows whose cached text key is recorded (user-supplied ids) are hashed: ids that hash the
                # texts cannot go stale, and hashing texts costs ~10x a lookup
                cached[order] = self.texts[at]
                check = np.flatnonzero(found & (cached != 0))
                if check.size:
                    now = text_keys(*(table.column(c).take(pa.array(check)) for c in pair))
                    bad = check[cached[check] != _low32(now)]
                    if bad.size:
                        first_stale = (start + int(bad[0]), int(pos[bad[0]])) if stale == 0 else first_stale
                        stale += int(bad.size)
        if missing:
            raise self._missing(rows, key, missing, first_missing)
        if stale:
            i, p = first_stale
            cache = self.caches[0 if self.cache_of is None else int(self.cache_of[p])].directory
            row = rows[i]
            raise CacheError(f"{cache} is stale: {stale} of {n} training pairs have other texts than it scored (first "
                             f"{key} {row[key]!r}: now {row[pair[0]][:40]!r} / {row[pair[1]][:40]!r}); re-run "
                             f"`distill cache --overwrite` on this data, or drop id_column so ids hash the texts")
        if out.ndim == 1:
            return rows.add_column("score", out)
        width = out.shape[1]
        lists = pa.ListArray.from_arrays(pa.array(np.arange(0, n * width + 1, width, dtype=np.int32)),
                                         pa.array(out.reshape(-1)))
        return rows.add_column("score", lists)

    def _missing(self, rows: Dataset, key: str, missing: int, first: int) -> CacheError:
        made_for = "; ".join(f"{c.directory} was made for {d['source']} split {d['split']} "
                             f"(data.fingerprint {d['fingerprint'][:12]})" for c in self.caches
                             for d in [c.manifest['data']])
        row = rows[first]
        texts = f" ({row['text_a'][:40]!r} / {row['text_b'][:40]!r})" if "text_b" in rows.column_names else ""
        return CacheError(
            f"{missing} of {len(rows)} training pairs have no teacher score (first {key} {row[key]!r}{texts}); "
            f"{made_for}. Re-run `distill cache` on this data (mined pairs: `distill cache --data.init_args.train "
            f"<mined file> --out <dir>`) and list every cache in data.init_args.cache_dir"
        )


def warn_unverified(cache: ScoreCache) -> None:
    warnings.warn(f"{cache.directory}: no usable text_key column (made before caches recorded their texts, or its "
                  f"keys by another hash), so its scores cannot be checked against the training texts; re-run "
                  f"`distill cache --overwrite` to make them checkable", stacklevel=4)
