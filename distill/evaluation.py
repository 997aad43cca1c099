"""Evaluation metrics (torchmetrics, so DDP syncs them)."""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import SpearmanCorrCoef


class SpearmanByMode(nn.Module):
    """STS Spearman of a student's scores against gold labels, one metric per scoring mode."""

    def __init__(self, modes: tuple[str, ...]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({m: SpearmanCorrCoef() for m in modes})

    def update(self, scores: dict[str, Tensor], gold: Tensor) -> None:
        for mode, metric in self.metrics.items():
            metric.update(scores[mode].float(), gold)

    def compute(self) -> dict[str, Tensor]:
        return {mode: metric.compute() for mode, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
