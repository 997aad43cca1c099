"""Exact resumption: a training DataLoader whose state Lightning checkpoints, so `--ckpt_path last` after a kill
continues with the same batch, in the same order, with the same random state (dropout)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


def rng_state() -> dict[str, Any]:
    """Global RNG states in types `torch.load(weights_only=True)` accepts (no numpy arrays); with CUDA, every
    visible device's generator too (dropout on a GPU draws from it, not from the CPU generator)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    # a checkpoint from another number of GPUs (or a CPU resume of a GPU run) keeps the fresh CUDA states:
    # same batches and order, other dropout masks
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class ResumableLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict`, which Lightning saves in every checkpoint.

    The state is the epoch, the number of batches the trainer has processed in it, and the RNG states at that
    moment. Loading it makes the next iteration skip those batches (the sampler's order depends only on its
    seed and epoch) and restore the RNG states just before the first new batch is handed out.
    """

    def __init__(self, *args: Any, datamodule: pl.LightningDataModule | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule
        self._resume: dict[str, Any] | None = None

    def _trainer(self) -> pl.Trainer | None:
        return getattr(self.datamodule, "trainer", None)

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer()
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # batches stepped this epoch
        return {"epoch": trainer.current_epoch, "batches": done, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state or None

    def __iter__(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        trainer = self._trainer()
        if not resume or trainer is None or resume["epoch"] != trainer.current_epoch:
            yield from super().__iter__()
            return
        # Lightning builds this iterator before it sets the sampler's epoch for the resumed epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(resume["epoch"])
        batches = super().__iter__()
        for _ in range(resume["batches"]):  # collation only: the model never sees these again
            next(batches, None)
        set_rng_state(resume["rng"])
        yield from batches
