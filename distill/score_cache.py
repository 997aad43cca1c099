"""The score cache's on-disk format (DESIGN.md "Score cache"): manifest, shards, and the score transforms.

Layout of a cache directory:
- `manifest.json` (`names.MANIFEST`, format 1): teacher and data fingerprints, `score_transform`, shards,
  `complete`;
- `shard-{start:09d}-{end:09d}.parquet`: columns `pair_id`, `score` (float32 raw teacher output; a `scores`
  list for multi-class teachers), `key` (int64 hash of `pair_id`) and `text_key` (int64 hash of the normalised
  texts, so a stale cache is refused), named by pair range so a rerun with another number of processes resumes.
Shards and the manifest are written to a temp file and renamed. `distill.cache` writes a cache with these
functions; `distill.cache_join` reads one back. A leaf module: it knows files and keys, not datamodules or models.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from distill import outdir
from distill.cache_keys import CHUNK, hash64, make_pair_id, text_keys_of
from distill.names import MANIFEST
from distill.outdir import write_text_atomic

FORMAT_VERSION = 1  # shards gained the `key` and `text_key` columns without a bump: older readers ignore them


class CacheError(ValueError):
    """A cache that does not match the teacher or data it is used with; the message names the field."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _sha256_unchanged(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime: a teacher folder is hashed once per process, not at every prepare_data and setup
    return sha256_file(path)


def content_sha256(path: str | Path) -> str:
    """What a model is, by content: a file's sha256, or for a folder the sha256 of its files' (relative path, sha256)
    in sorted order, so a re-made folder with the same files keeps its caches and a retrained one does not. Each
    file is hashed once per process while its size and mtime stay the same."""
    path = Path(path)

    def one(file: Path) -> str:
        stat = file.stat()
        return _sha256_unchanged(str(file.resolve()), stat.st_size, stat.st_mtime_ns)

    if path.is_file():
        return one(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path).as_posix()}\x1f{one(file)}\n".encode())
    return h.hexdigest()


def apply_transform(raw: np.ndarray, transform: str, label_range: list[float] | None = None) -> np.ndarray:
    """Map raw teacher outputs onto the target scale [0, 1] (or leave them, for `identity`)."""
    if transform == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw))
    if transform == "affine-from-label_range":
        lo, hi = label_range  # type: ignore[misc]
        return (raw - lo) / (hi - lo)
    if transform == "identity":
        return raw
    raise CacheError(f"unknown score_transform {transform!r} in the manifest; expected sigmoid, "
                     f"affine-from-label_range or identity")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, or a one-line error for a corrupt or foreign one."""
    try:
        manifest = json.loads(path.read_text())
        manifest["teacher"], manifest["data"]  # noqa: B018 - the keys every reader needs
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CacheError(f"{path}: not a readable score-cache manifest ({type(err).__name__}); delete the "
                         f"cache directory or re-run `distill cache` with --overwrite") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CacheError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT_VERSION}; "
                         f"re-run `distill cache` with --overwrite")
    return manifest


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


def shard_name(start: int, end: int) -> str:
    return f"shard-{start:09d}-{end:09d}.parquet"


def write_shard(directory: Path, start: int, end: int, pair_ids: list[str], scores: list[Any] | np.ndarray,
                text_keys: np.ndarray | None = None) -> None:
    """Write one shard atomically: `pair_id`, `score` (or multi-class `scores`), `key` and, given the pairs'
    `text_keys` (`distill.cache_keys.text_keys`), `text_key`; a 2-D `scores` array means multi-class."""
    multi = (len(scores) and isinstance(scores[0], list)) or getattr(scores, "ndim", 1) == 2
    kind = pa.list_(pa.float32()) if multi else pa.float32()
    ids = pa.array(pair_ids, pa.string())
    columns = {"pair_id": ids, "scores" if multi else "score": pa.array(list(scores) if multi else scores, kind),
               "key": pa.array(hash64(ids), pa.int64())}
    if text_keys is not None:
        columns["text_key"] = pa.array(np.asarray(text_keys, np.int64))
    path = directory / shard_name(start, end)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, path)


def shard_ok(path: Path, pair_ids: list[str], sha256: str | None) -> bool:
    """A shard on disk is reused only if it reads back with exactly the expected pair ids (and checksum)."""
    if not path.is_file():
        return False
    if sha256 is not None and sha256_file(path) != sha256:
        return False
    try:
        return pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist() == pair_ids
    except (pa.ArrowException, OSError):
        return False


def stored_text_keys(rows: Dataset) -> np.ndarray:
    """The `text_key` column to write: the texts' hash where the pair_id is user-supplied (id_column), so that
    training refuses the scores once those texts are edited; 0 where the id already hashes the texts
    (`make_pair_id`): such an id cannot go stale, and the join then skips hashing that row's texts."""
    keys = text_keys_of(rows)
    i = 0
    for batch in rows.select_columns(["pair_id", "text_a", "text_b"]).iter(batch_size=CHUNK):
        n = len(batch["pair_id"])
        hashed = [p == make_pair_id(a, b) for p, a, b in zip(batch["pair_id"], batch["text_a"], batch["text_b"])]
        keys[i:i + n][np.array(hashed, bool)] = 0
        i += n
    return keys


#: manifest fields recorded for people, not compared: where the teacher was read from (its hash is compared)
NOT_IDENTITY = ("checkpoint", "model")


def differing(old: dict, new: dict, prefix: str) -> list[str]:
    """`prefix.key (old != new)` for every key of `new` whose value `old` does not share (a path is no identity:
    its content hash is, so the same checkpoint or folder reached by another path keeps its cache)."""
    return [f"{prefix}.{k} ({old.get(k)!r} != {new.get(k)!r})" for k in new
            if k not in NOT_IDENTITY and old.get(k) != new.get(k)]


def open_cache(directory: Path, expected: dict[str, Any], overwrite: bool, verb: str,
               keep: list[Path] | None = None) -> dict[str, Any] | None:
    """The manifest of the cache in `directory` to resume (None: none yet, or `overwrite`, which first deletes
    the old cache); a cache made by another teacher or for other data is refused, naming the differing fields.

    Shared by the score cache (`distill cache`) and the teacher-embedding cache (`distill.embedding_cache`).

    Args:
        directory: the cache folder (created).
        expected: the manifest's `teacher` and `data` as they would be written now.
        overwrite: replace whatever cache the folder holds instead of refusing.
        verb: what writes the cache, for messages (`distill cache`).
        keep: paths being read while writing (a checkpoint): a folder holding one is never deleted.
    """
    manifest_path = directory / MANIFEST
    old = read_manifest(manifest_path) if manifest_path.is_file() and not overwrite else None
    if old is not None:
        diffs = differing(old["teacher"], expected["teacher"], "teacher") + differing(
            old["data"], expected["data"], "data")
        if diffs:
            raise CacheError(f"{directory} holds a cache made differently: {'; '.join(diffs)}. Use another "
                             f"directory, or overwrite it ({verb} --overwrite)")
    # DDP workers started by Lightning's launcher rerun the verb later: only the first process deletes
    first_process = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if overwrite and directory.exists() and first_process:
        try:  # only a folder a cache writer made (its manifest), never the current folder or a file being read
            outdir.check_out(directory, MANIFEST, verb, overwrite=True, keep=keep)
        except outdir.OutDirError as err:
            raise CacheError(str(err)) from None
        print(f"WARNING: --overwrite: replacing the cache in {directory}")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return old


def verified_shards(directory: Path, shards: list[tuple[int, int]], ids: list[str], verb: str) -> list[dict[str, Any]]:
    """The manifest's shard list, each shard read back and checksummed after writing."""
    listed = []
    for s, e in shards:
        path = directory / shard_name(s, e)
        if not shard_ok(path, ids[s:e], None):
            raise CacheError(f"{path}: missing or unreadable after writing; re-run {verb} to resume")
        listed.append({"file": path.name, "start": s, "end": e, "rows": e - s, "sha256": sha256_file(path)})
    return listed
