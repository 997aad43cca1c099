"""`distill cache`: score a pair split with a trained teacher into a score cache (`Trainer.predict` + a writer).

The cache's format is `distill.score_cache`'s, its reader `distill.cache_join`'s. Shards are spread over DDP ranks
by index and written as soon as they are scored, so a rerun recomputes only shards that do not verify.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch.distributed as dist
from datasets import Dataset
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler

from distill.cache_join import ScoreCache, join_caches  # noqa: F401 - re-exported: callers read caches from here
from distill.checkpoints import check_fits, read_checkpoint
from distill.data import PairCollator, PairDataModule, fingerprint, load_tokenizer, tokenize, tokenizer_fingerprint
from distill.machine import run_precision
from distill.names import MANIFEST
from distill.score_cache import (  # noqa: F401 - the format's names are re-exported: callers import them from here
    FORMAT_VERSION,
    CacheError,
    apply_transform,
    open_cache,
    read_manifest,
    sha256_file,
    shard_name,
    shard_ok,
    stored_text_keys,
    verified_shards,
    write_json_atomic,
    write_shard,
)
from distill.signals import Preempted, StopOnSigterm, stopped_message


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

    def __init__(self, directory: Path, shards: list[tuple[int, int]], pair_ids: list[str],
                 text_keys: np.ndarray | None = None) -> None:
        super().__init__(write_interval="batch")
        self.directory, self.shards, self.pair_ids, self.text_keys = directory, shards, pair_ids, text_keys
        self.pending: dict[int, dict[int, Any]] = {}  # shard -> row index -> score

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        scores = prediction["score"].tolist()
        k = next(k for k, (s, e) in enumerate(self.shards) if s <= batch_indices[0] < e)
        rows = self.pending.setdefault(k, {})
        rows.update(zip(batch_indices, scores))
        start, end = self.shards[k]
        if len(rows) == end - start:
            write_shard(self.directory, start, end, self.pair_ids[start:end], [rows[i] for i in range(start, end)],
                        None if self.text_keys is None else self.text_keys[start:end])
            del self.pending[k]


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


def teacher_fingerprint(teacher: pl.LightningModule, ckpt_path: str | None) -> dict[str, Any]:
    """What made the scores: the teacher's class, its weights' hash (the checkpoint's bytes, or an off-the-shelf
    folder's content hash), tokenizer, head, transform, length and prefixes."""
    source = ({"checkpoint": str(ckpt_path), "checkpoint_sha256": sha256_file(ckpt_path)} if ckpt_path is not None
              else teacher.fingerprint_source())
    return {
        "class_path": f"{type(teacher).__module__}.{type(teacher).__name__}",
        **source,
        "backbone": teacher.hparams.get("backbone"),
        "tokenizer_sha256": tokenizer_fingerprint(teacher.tokenization()["tokenizer"]),
        "head": "regression" if teacher.hparams.get("num_labels", 1) == 1 else
                f"classification-{teacher.hparams['num_labels']}",
        "score_transform": teacher.score_transform,
        "max_length": teacher.hparams.get("max_length"),
        # only when set, so caches made before teachers had a prefix still match
        **({"prefix": teacher.hparams["prefix"]} if teacher.hparams.get("prefix") else {}),
        **({"document_prefix": teacher.hparams["document_prefix"]}
           if teacher.hparams.get("document_prefix") is not None else {}),
    }


def data_fingerprint(data: PairDataModule, split: str, rows: Dataset) -> dict[str, Any]:
    """The manifest's `data`: what names the scored rows (their content hash) and where they came from."""
    return {"fingerprint": fingerprint(rows), "source": data.sources[split], "split": split, "n_pairs": len(rows),
            "label_range": list(data.label_ranges.get(split) or []) or None}


def main(
    teacher: pl.LightningModule,
    data: PairDataModule,
    out: str,
    ckpt_path: str | None = None,
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
        ckpt_path: the teacher checkpoint (the one `distill fit` selected on val/spearman); none for an
            off-the-shelf folder teacher (`teachers.FolderCrossEncoder`), whose folder holds its weights.
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
    if directory.exists() and not directory.is_dir():
        raise CacheError(f"--out {directory} is a file; give a folder for the cache (new, or one `distill cache` "
                         f"wrote, which it resumes)")
    if ckpt_path is not None:
        load_teacher_checkpoint(teacher, ckpt_path)
    elif not hasattr(teacher, "fingerprint_source"):
        raise CacheError(f"{type(teacher).__name__} is trained by `distill fit`: give its checkpoint with --ckpt_path "
                         f"(or an off-the-shelf cross-encoder folder as --teacher teachers.FolderCrossEncoder "
                         f"--teacher.folder <folder>)")
    rows = data.rows(split)
    expected = {"format": FORMAT_VERSION, "teacher": teacher_fingerprint(teacher, ckpt_path),
                "data": data_fingerprint(data, split, rows)}
    old = open_cache(directory, expected, overwrite, "distill cache", keep=[Path(ckpt_path)] if ckpt_path else [])
    shards = [(s, min(s + shard_size, len(rows))) for s in range(0, len(rows), shard_size)]
    pair_ids = rows["pair_id"]
    known = {s["file"]: s["sha256"] for s in (old or {}).get("shards", [])}
    todo = {k for k, (s, e) in enumerate(shards)
            if not shard_ok(directory / shard_name(s, e), pair_ids[s:e], known.get(shard_name(s, e)))}
    precision, why = run_precision(precision, accelerator)
    if why:
        print(f"distill cache: {why}", file=sys.stderr, flush=True)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                         logger=False, use_distributed_sampler=False, enable_checkpointing=False,
                         callbacks=[ShardWriter(directory, shards, pair_ids, stored_text_keys(rows)), StopOnSigterm()])
    if trainer.is_global_zero and (old is None or todo):
        # not complete while shards are (re)computed; the verified ones stay listed so a rerun can skip them
        write_json_atomic(directory / MANIFEST, {**expected, "shards": (old or {}).get("shards", []),
                                                 "complete": False})
    if todo:
        _score(trainer, teacher, rows, split, ShardBatchSampler(shards, todo, batch_size))
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        shards_listed = verified_shards(directory, shards, pair_ids, "`distill cache`")
        write_json_atomic(directory / MANIFEST, {**expected, "shards": shards_listed,
                                                 "complete": True})
        print(f"cache: {len(rows)} pairs in {len(shards)} shards ({len(todo)} scored now) -> {directory}")
    return directory


def _score(trainer: pl.Trainer, teacher: pl.LightningModule, rows: Dataset, split: str,
           batches: ShardBatchSampler) -> None:
    """Score the shards still to do; the trainer's `ShardWriter` writes each one as soon as it is complete."""
    spec = teacher.tokenization()
    tokenised = rows.map(tokenize, batched=True, fn_kwargs=spec, desc=f"tokenising {split}")
    loader = DataLoader(tokenised, batch_sampler=batches,
                        collate_fn=PairCollator(load_tokenizer(spec["tokenizer"]).pad_token_id or 0))
    try:
        trainer.predict(teacher, dataloaders=loader, return_predictions=False)
    except SIGTERMException as err:  # finished shards stay on disk and verify: a rerun resumes from them
        raise Preempted(stopped_message("cache", trainer)) from err
