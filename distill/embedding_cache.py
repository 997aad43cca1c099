"""The teacher-embedding cache: a frozen teacher bi-encoder's vectors of source sentences, kept like teacher scores.

Embedding-level distillation (`distill.losses.EmbeddingMSE`, Reimers & Gurevych 2020) regresses the student's
embedding of a sentence and of its translations onto the teacher's embedding of the English source. The teacher
runs once over the distinct sources; its vectors are stored in the score cache's format (`distill.score_cache`):
a `manifest.json` with the teacher's and the data's fingerprints, and parquet shards named by row range whose
`scores` column holds one vector per row (row i = the i-th distinct source sentence, sorted). Shards are written
as they are computed, so a killed run resumes; a folder holding vectors of another teacher (its files' content
hash, its prefix) or of other sentences is refused, naming the field, unless `overwrite` is given.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from distill.backbones import cache_root
from distill.data import DataError
from distill.names import MANIFEST, STUDENT_CONFIG
from distill.score_cache import (
    FORMAT_VERSION,
    CacheError,
    differing,
    open_cache,
    read_manifest,
    shard_name,
    shard_ok,
    verified_shards,
    write_json_atomic,
    write_shard,
)

VERB = "the teacher-embedding cache (data.init_args.teacher_embeddings)"


def load_encoder(model: str, prefix: str = "") -> Any:
    """A bi-encoder to embed with: a student checkpoint (.ckpt), a student or exported folder (its own prefix),
    or a backbone short name / folder (with `prefix`, mean pooling, normalised)."""
    from students import BiEncoder

    path = Path(model)
    if path.suffix == ".ckpt":
        from distill.checkpoints import load_model

        kind, encoder, _ = load_model(path)
        if kind != "student":
            raise DataError(f"{model} is a {kind} checkpoint; teacher embeddings need a bi-encoder (a student "
                            f"checkpoint or folder, or a backbone)")
        return encoder
    if (path / STUDENT_CONFIG).is_file():
        return BiEncoder.from_pretrained(path)
    return BiEncoder(backbone=model, prefix=prefix)


def content_sha256(model: str) -> str:
    """Hash of what a teacher is: the bytes of a checkpoint file, or of every file of a model folder (by relative
    path), so a re-made folder with the same weights keeps its cache and a retrained one does not."""
    from distill import backbones, score_cache

    path = Path(model)
    if not path.exists():
        try:  # a short name (multilingual-e5-small) lives in a prepared folder
            path = Path(backbones.resolve(model))
        except FileNotFoundError as err:
            raise DataError(f"data.init_args.teacher_embeddings={model!r}: {err}") from None
    return score_cache.content_sha256(path)


def sentences_fingerprint(sentences: list[str]) -> str:
    """Content hash of the (sorted, distinct) source sentences a cache holds vectors of."""
    return hashlib.sha256("\x1f".join(sentences).encode("utf-8")).hexdigest()


def _ids(sentences: list[str]) -> list[str]:
    return [hashlib.sha256(s.encode("utf-8")).hexdigest()[:20] for s in sentences]


def default_dir(model: str, prefix: str, sentences: list[str]) -> Path:
    """Where vectors live when no folder is configured: `DISTILL_HOME/embeddings/<teacher and data hash>`."""
    key = hashlib.sha256(f"{content_sha256(model)}|{prefix}|{sentences_fingerprint(sentences)}".encode())
    return cache_root() / "embeddings" / key.hexdigest()[:24]


def expected_manifest(model: str, prefix: str, sentences: list[str]) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "kind": "embeddings",
            "teacher": {"model": str(model), "content_sha256": content_sha256(model), "prefix": prefix},
            "data": {"fingerprint": sentences_fingerprint(sentences), "n_sentences": len(sentences)}}


def build(model: str, sentences: list[str], directory: str | Path | None = None, prefix: str = "",
          batch_size: int = 64, shard_size: int = 4096, overwrite: bool = False) -> Path:
    """Embed the distinct `sentences` with the teacher bi-encoder `model` into a cache folder (resumable).

    Args:
        model: the teacher bi-encoder: a student checkpoint or folder, an exported folder, or a backbone.
        sentences: the source sentences (duplicates and order do not matter).
        directory: the cache folder; None: `default_dir` (named by teacher and data, so never stale).
        prefix: input prefix for a backbone teacher (`"query: "` for e5); folders bring their own.
        batch_size: sentences per forward pass.
        shard_size: sentences per shard (the unit of resumption).
        overwrite: replace a cache of another teacher or data in `directory` instead of refusing it.

    Raises:
        CacheError: `directory` holds vectors of another teacher or other sentences (the field is named).
    """
    from tqdm.auto import tqdm

    unique = sorted(set(sentences))
    directory = Path(directory) if directory is not None else default_dir(model, prefix, unique)
    expected = expected_manifest(model, prefix, unique)
    old = open_cache(directory, expected, overwrite, VERB, keep=[Path(model)] if Path(model).exists() else None)
    ids = _ids(unique)
    shards = [(s, min(s + shard_size, len(unique))) for s in range(0, len(unique), shard_size)]
    known = {s["file"]: s["sha256"] for s in (old or {}).get("shards", [])}
    todo = [(s, e) for s, e in shards if not shard_ok(directory / shard_name(s, e), ids[s:e],
                                                       known.get(shard_name(s, e)))]
    if old is not None and old.get("complete") and not todo:
        return directory
    write_json_atomic(directory / MANIFEST, {**expected, "shards": (old or {}).get("shards", []), "complete": False})
    if todo:
        encoder = load_encoder(model, prefix)
        for s, e in tqdm(todo, desc=f"teacher embeddings ({len(unique)} sentences, {model})", unit="shard"):
            with torch.inference_mode():
                vectors = encoder.encode(unique[s:e], batch_size=batch_size).float().numpy()
            write_shard(directory, s, e, ids[s:e], vectors)
    write_json_atomic(directory / MANIFEST, {**expected, "shards": verified_shards(directory, shards, ids, VERB),
                                             "complete": True})
    return directory


def read(directory: str | Path, sentences: list[str], model: str | None = None,
         prefix: str = "") -> dict[str, np.ndarray]:
    """{sentence: vector} from a complete cache of `sentences`; a cache made for other sentences, or (given
    `model`) by another teacher or prefix, is refused, naming the field."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CacheError(f"{directory}: no {MANIFEST}; this is not a teacher-embedding cache (build it first)")
    manifest = read_manifest(path)
    if not manifest.get("complete"):
        raise CacheError(f"{path}: incomplete (a run was stopped while embedding); re-run to resume it")
    unique = sorted(set(sentences))
    stale = differing(manifest["data"], {"fingerprint": sentences_fingerprint(unique)}, "data")
    if model is not None:
        stale += differing(manifest["teacher"], expected_manifest(model, prefix, unique)["teacher"], "teacher")
    if stale:
        raise CacheError(f"{directory} is stale: {'; '.join(stale)}; rebuild it (overwrite) or point "
                         f"data.init_args.teacher_embeddings_dir elsewhere")
    columns = [pq.read_table(directory / s["file"], columns=["scores"]).column("scores") for s in manifest["shards"]]
    flat = np.concatenate([np.stack(c.to_numpy(zero_copy_only=False)) for c in columns]).astype(np.float32)
    return dict(zip(unique, flat))


def teacher_vectors(model: str, sentences: list[str], prefix: str = "", directory: str | Path | None = None,
                    batch_size: int = 64, overwrite: bool = False) -> dict[str, np.ndarray]:
    """{sentence: vector} of the teacher for `sentences`, built once (resumable) and read back."""
    unique = sorted(set(sentences))
    folder = build(model, unique, directory, prefix, batch_size, overwrite=overwrite)
    return read(folder, unique, model, prefix)
