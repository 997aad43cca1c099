"""Teacher score cache: `distill cache` writes teacher scores for a pair split; `ScoreCache` reads them back.

Layout of a cache directory (DESIGN.md "Score cache"):
- `manifest.json` (format 1): teacher and data fingerprints, `score_transform`, shards, `complete`;
- `shard-{start:09d}-{end:09d}.parquet`: columns `pair_id`, `score` (float32 raw teacher output; a `scores`
  list for multi-class teachers), named by pair range so a rerun with another number of processes resumes.
Shards are written to a temp file and renamed; a rerun recomputes only shards that do not verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch.distributed as dist
from datasets import Dataset
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Sampler

from distill.checkpoints import check_fits, read_checkpoint
from distill.data import PairCollator, PairDataModule, fingerprint, load_tokenizer, tokenize, tokenizer_fingerprint

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CacheError(ValueError):
    """A cache that does not match the teacher or data it is used with; the message names the field."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(start: int, end: int) -> str:
    return f"shard-{start:09d}-{end:09d}.parquet"


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


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


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

    def scores(self) -> dict[str, float | list[float]]:
        """pair_id -> transformed teacher score, after verifying every shard's checksum."""
        out: dict[str, Any] = {}
        transform = self.manifest["teacher"]["score_transform"]
        for shard in self.manifest["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file() or sha256_file(path) != shard["sha256"]:
                raise CacheError(f"{path}: missing or its sha256 differs from the manifest (corrupt shard); "
                                 f"re-run `distill cache` to recompute it")
            table = pq.read_table(path)
            column = "score" if "score" in table.column_names else "scores"
            raw = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
            values = apply_transform(raw, transform, self.manifest["data"].get("label_range"))
            out.update(zip(table.column("pair_id").to_pylist(), values.tolist()))
        return out

    def join(self, rows: Dataset) -> Dataset:
        """Add a `score` column to `rows`, looked up by `pivot_id` where present, else by `pair_id`."""
        return join_caches([self], rows)


def join_caches(caches: list[ScoreCache], rows: Dataset) -> Dataset:
    """Add a `score` column from one or several caches (e.g. gold pairs' and mined silver pairs' caches).

    Raises:
        CacheError: some rows have a score in none of the caches; names the first, each cache's data and the fix.
    """
    key = "pivot_id" if "pivot_id" in rows.column_names else "pair_id"
    scores: dict[str, Any] = {}
    for cache in caches:
        scores.update(cache.scores())
    ids = rows[key]
    missing = [i for i, pid in enumerate(ids) if pid not in scores]
    if missing:
        made_for = "; ".join(f"{c.directory} was made for {d['source']} split {d['split']} "
                             f"(data.fingerprint {d['fingerprint'][:12]})" for c in caches
                             for d in [c.manifest['data']])
        first = missing[0]
        texts = f" ({rows[first]['text_a'][:40]!r} / {rows[first]['text_b'][:40]!r})" if "text_b" in rows.column_names \
            else ""
        raise CacheError(
            f"{len(missing)} of {len(ids)} training pairs have no teacher score (first {key} {ids[first]!r}{texts}); "
            f"{made_for}. Re-run `distill cache` on this data (mined pairs: `distill cache --data.init_args.train "
            f"<mined file> --out <dir>`) and list every cache in data.init_args.cache_dir"
        )
    return rows.add_column("score", [scores[pid] for pid in ids])


class ShardBatchSampler(Sampler[list[int]]):
    """Batches that never cross a shard; shard k goes to rank k % world_size.

    The assignment depends only on the shard index, so each rank can skip its own finished shards without
    asking the others, and a rerun may use another number of processes.
    """

    def __init__(self, shards: list[tuple[int, int]], todo: set[int], batch_size: int) -> None:
        self.shards, self.todo, self.batch_size = shards, todo, batch_size

    def _mine(self) -> list[int]:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return [k for k in range(len(self.shards)) if k % world == rank and k in self.todo]

    def __iter__(self) -> Iterator[list[int]]:
        for k in self._mine():
            start, end = self.shards[k]
            for i in range(start, end, self.batch_size):
                yield list(range(i, min(i + self.batch_size, end)))

    def __len__(self) -> int:
        return sum(-(-(self.shards[k][1] - self.shards[k][0]) // self.batch_size) for k in self._mine())


class ShardWriter(BasePredictionWriter):
    """Writes each shard atomically as soon as its last batch is scored (a kill loses one shard at most)."""

    def __init__(self, directory: Path, shards: list[tuple[int, int]], pair_ids: list[str]) -> None:
        super().__init__(write_interval="batch")
        self.directory, self.shards, self.pair_ids = directory, shards, pair_ids
        self.pending: dict[int, dict[int, Any]] = {}  # shard -> row index -> score

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        scores = prediction["score"].tolist()
        k = next(k for k, (s, e) in enumerate(self.shards) if s <= batch_indices[0] < e)
        rows = self.pending.setdefault(k, {})
        rows.update(zip(batch_indices, scores))
        start, end = self.shards[k]
        if len(rows) == end - start:
            write_shard(self.directory, start, end, self.pair_ids[start:end], [rows[i] for i in range(start, end)])
            del self.pending[k]


def write_shard(directory: Path, start: int, end: int, pair_ids: list[str], scores: list[Any]) -> None:
    column = "scores" if scores and isinstance(scores[0], list) else "score"
    kind = pa.list_(pa.float32()) if column == "scores" else pa.float32()
    table = pa.table({"pair_id": pa.array(pair_ids, pa.string()), column: pa.array(scores, kind)})
    path = directory / shard_name(start, end)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _shard_ok(path: Path, pair_ids: list[str], sha256: str | None) -> bool:
    """A shard on disk is reused only if it reads back with exactly the expected pair ids (and checksum)."""
    if not path.is_file():
        return False
    if sha256 is not None and sha256_file(path) != sha256:
        return False
    try:
        return pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist() == pair_ids
    except (pa.ArrowException, OSError):
        return False


def load_teacher_checkpoint(teacher: pl.LightningModule, ckpt_path: str) -> None:
    """Load a Lightning checkpoint's weights into `teacher`; a wrong file or kind is a one-line error."""
    ckpt = read_checkpoint(ckpt_path)
    given = {k: ckpt.get("hyper_parameters", {}).get(k) for k in ("backbone", "num_labels", "max_length")}
    differing = [f"{k}={v!r} (config: {teacher.hparams.get(k)!r})" for k, v in given.items()
                 if v is not None and v != teacher.hparams.get(k)]
    if differing:
        raise CacheError(f"{ckpt_path} was trained with {', '.join(differing)}; set teacher.init_args to match")
    check_fits(teacher, ckpt["state_dict"], ckpt_path)
    teacher.load_state_dict(ckpt["state_dict"])


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


def teacher_fingerprint(teacher: pl.LightningModule, ckpt_path: str) -> dict[str, Any]:
    return {
        "class_path": f"{type(teacher).__module__}.{type(teacher).__name__}",
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "backbone": teacher.hparams.get("backbone"),
        "tokenizer_sha256": tokenizer_fingerprint(teacher.tokenization()["tokenizer"]),
        "head": "regression" if teacher.hparams.get("num_labels", 1) == 1 else
                f"classification-{teacher.hparams['num_labels']}",
        "score_transform": teacher.score_transform,
        "max_length": teacher.hparams.get("max_length"),
        # only when set, so caches made before teachers had a prefix still match
        **({"prefix": teacher.hparams["prefix"]} if teacher.hparams.get("prefix") else {}),
    }


def _differing(old: dict, new: dict, prefix: str) -> list[str]:
    return [f"{prefix}.{k} ({old.get(k)!r} != {new.get(k)!r})" for k in new
            if k not in ("checkpoint",) and old.get(k) != new.get(k)]


def main(
    teacher: pl.LightningModule,
    data: PairDataModule,
    ckpt_path: str,
    out: str,
    split: Literal["train", "val", "test", "predict"] = "train",
    shard_size: int = 2048,
    batch_size: int = 64,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Score a pair split with a trained teacher into a score cache.

    Args:
        teacher: the teacher, configured by class_path as in its fit config.
        data: the pair datamodule; `split` names which of its sources to score.
        ckpt_path: the teacher checkpoint (the one `distill fit` selected on val/spearman).
        out: the cache directory (created; a rerun resumes it).
        split: `train`, `val`, `test` or `predict`.
        shard_size: pairs per shard (the unit of resumption).
        batch_size: pairs per forward pass.
        accelerator: Lightning accelerator.
        devices: Lightning devices (several: shards are spread across DDP ranks).
        strategy: Lightning strategy (e.g. ddp).
        precision: Lightning precision (e.g. bf16-mixed).
        overwrite: delete whatever the directory holds (e.g. a cache made by another teacher or for other
            data) and score everything anew, instead of refusing.
    """
    directory = Path(out)
    load_teacher_checkpoint(teacher, ckpt_path)
    rows = data.rows(split)
    expected = {
        "format": FORMAT_VERSION,
        "teacher": teacher_fingerprint(teacher, ckpt_path),
        "data": {"fingerprint": fingerprint(rows), "source": data.sources[split], "split": split,
                 "n_pairs": len(rows), "label_range": list(data.label_ranges.get(split) or []) or None},
    }
    manifest_path = directory / MANIFEST
    old = read_manifest(manifest_path) if manifest_path.is_file() and not overwrite else None
    if old is not None:
        diffs = _differing(old["teacher"], expected["teacher"], "teacher") + _differing(
            old["data"], expected["data"], "data")
        if diffs:
            raise CacheError(f"{directory} holds a cache made differently: {'; '.join(diffs)}. Use another --out, "
                             f"or --overwrite to replace it")
    # DDP workers started by Lightning's launcher rerun this function later: only the first process deletes
    first_process = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if overwrite and directory.exists() and first_process:
        print(f"WARNING: --overwrite: replacing everything in {directory}")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    shards = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    pair_ids = rows["pair_id"]
    known = {s["file"]: s["sha256"] for s in (old or {}).get("shards", [])}
    todo = {k for k, (s, e) in enumerate(shards)
            if not _shard_ok(directory / shard_name(s, e), pair_ids[s:e], known.get(shard_name(s, e)))}
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                         logger=False, use_distributed_sampler=False, enable_checkpointing=False,
                         callbacks=[ShardWriter(directory, shards, pair_ids)])
    if trainer.is_global_zero and (old is None or todo):
        # not complete while shards are (re)computed; the verified ones stay listed so a rerun can skip them
        _write_json_atomic(manifest_path, {**expected, "shards": (old or {}).get("shards", []), "complete": False})
    if todo:
        spec = teacher.tokenization()
        tokenised = rows.map(tokenize, batched=True, fn_kwargs=spec, desc=f"tokenising {split}")
        loader = DataLoader(tokenised, batch_sampler=ShardBatchSampler(shards, todo, batch_size),
                            collate_fn=PairCollator(load_tokenizer(spec["tokenizer"]).pad_token_id or 0))
        trainer.predict(teacher, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        listed = []
        for s, e in shards:
            path = directory / shard_name(s, e)
            if not _shard_ok(path, pair_ids[s:e], None):
                raise CacheError(f"{path}: missing or unreadable after scoring; re-run `distill cache` to resume")
            listed.append({"file": path.name, "start": s, "end": e, "rows": e - s, "sha256": sha256_file(path)})
        _write_json_atomic(manifest_path, {**expected, "shards": listed, "complete": True})
        print(f"cache: {n} pairs in {len(shards)} shards ({len(todo)} scored now) -> {directory}")
    return directory
