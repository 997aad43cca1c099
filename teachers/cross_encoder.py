"""Cross-encoder teacher: a transformers backbone reads (text_a, text_b) jointly and outputs a score."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Accuracy, MetricCollection, SpearmanCorrCoef
from transformers import AutoModelForSequenceClassification

from distill.backbone_record import RecordsBackbone
from distill.backbones import check_max_length, load_backbone
from distill.optim import adamw_with_warmup


class CrossEncoder(RecordsBackbone, pl.LightningModule):
    """A cross-encoder: regression head (`num_labels=1`, score in [0, 1] after a sigmoid) or classification.

    Args:
        backbone: short name (`minilm-l6`, `all-mpnet-base-v2`), local folder or hub id.
        num_labels: 1 for a regression score; >1 for classification over labels 0..num_labels-1.
        max_length: tokens per pair (both texts together), truncated beyond.
        loss: regression loss on gold labels mapped to [0, 1]: `bce` on the logit (as sentence-transformers'
            CrossEncoder) or `mse` on its sigmoid.
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        warmup_ratio: share of optimiser steps spent warming up, then linear decay to 0.
        prefix: prepended to both texts of every pair (e.g. e5's "query: "); saved with the model.
        document_prefix: prepended instead to the second text, the document (retrieval: e5's "passage: ");
            null: the second text takes `prefix` too.
    """

    def __init__(
        self,
        backbone: str = "minilm-l6",
        num_labels: int = 1,
        max_length: int = 128,
        loss: str = "bce",
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        prefix: str = "",
        document_prefix: str | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("bce", "mse"):
            raise ValueError(f"model.init_args.loss is {loss!r}; expected 'bce' or 'mse'")
        self.save_hyperparameters()
        self.model, self.backbone_path = load_backbone(AutoModelForSequenceClassification, backbone,
                                                       num_labels=num_labels)
        self.model.train()  # from_pretrained returns eval mode, which would silently switch dropout off
        check_max_length(self.model, max_length, "model.init_args.max_length")
        self.regression = num_labels == 1
        make = (lambda: SpearmanCorrCoef()) if self.regression else (  # noqa: E731
            lambda: Accuracy(task="multiclass", num_classes=num_labels))
        name = "spearman" if self.regression else "accuracy"
        self.metrics = torch.nn.ModuleDict(
            {s: MetricCollection({name: make()}, prefix=f"{s}/") for s in ("val", "test")})
        self.register_load_state_dict_pre_hook(RecordsBackbone._allow_unrecorded)

    def _backbone_parts(self) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoTokenizer

        return self.model, AutoTokenizer.from_pretrained(self.backbone_path)

    @property
    def score_transform(self) -> str:
        """How the cache maps raw scores onto the target scale (DESIGN.md "Score cache")."""
        return "sigmoid" if self.regression else "identity"

    def tokenization(self) -> dict[str, Any]:
        """How the datamodule must tokenise for this model."""
        return {"tokenizer": self.backbone_path, "max_length": self.hparams.max_length, "joint": True,
                "prefix": self.hparams.get("prefix", ""), "document_prefix": self.hparams.get("document_prefix")}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Raw scores: (batch,) logits for regression, (batch, num_labels) for classification."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        logits = self.model(**inputs).logits
        return logits.squeeze(-1) if self.regression else logits

    def _loss(self, logits: Tensor, gold: Tensor) -> Tensor:
        if not self.regression:
            return F.cross_entropy(logits, gold.long())
        if self.hparams.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, gold)
        return F.mse_loss(torch.sigmoid(logits), gold)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._loss(self(batch), self._gold(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["pair_id"]))
        return loss

    def _gold(self, batch: dict[str, Any]) -> Tensor:
        key = "gold" if self.regression else "label"
        if key not in batch:
            raise ValueError("a teacher's training and evaluation data need gold labels: this split has no label "
                             "column (set data.init_args.label_column)")
        return batch[key] if self.regression else batch[key].long()

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        logits = self(batch)
        # float32 before the sigmoid: under bf16-mixed, sigmoid of small logits rounds to one value (bf16 has a
        # step of 2^-8 near 0.5), which ties every pair and turns Spearman into 0
        preds = torch.sigmoid(logits.float()) if self.regression else logits.argmax(-1)
        self.metrics[split].update(preds, self._gold(batch))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.metrics["val"].compute(), prog_bar=True)
        self.metrics["val"].reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.metrics["test"].compute())
        self.metrics["test"].reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Raw scores (what the cache stores), with their pair ids."""
        return {"pair_id": batch["pair_id"], "score": self(batch).float().cpu()}

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return adamw_with_warmup(self, hp.lr, hp.weight_decay, hp.warmup_ratio)
