"""`distill predict` output: predictions to Parquet (teacher: `pair_id, score`; student: `id, embedding`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter


class ParquetWriter(BasePredictionWriter):
    """Collects `predict_step` outputs and writes one Parquet file (one per rank under DDP: `-rank{r}`).

    Args:
        path: the Parquet file to write; written to a temp file and renamed, so it is never half-written.
    """

    def __init__(self, path: str) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.columns: dict[str, list] = {}

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        for key, value in prediction.items():
            self.columns.setdefault(key, []).extend(value.tolist() if hasattr(value, "tolist") else value)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.table(self.columns), tmp)
        os.replace(tmp, path)
        self.columns = {}
