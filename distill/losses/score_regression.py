"""Score regression: the DSE objective."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class ScoreRegression(nn.Module):
    """MSE between a student's pair scores and targets on [0, 1].

    `target="teacher"` regresses the teacher's cached score, mapped through the cache manifest's
    `score_transform` (DSE: Barkan et al., AAAI 2020, arXiv:1908.05161); `target="gold"` regresses the gold
    label mapped from the data's `label_range`. The module applies it to every scoring mode the student has:
    the cosine (regressed directly onto the [0, 1] target, as sentence-transformers' CosineSimilarityLoss)
    and, with a DSE head, the head's score.

    Shapes: scores, targets (batch,).

    Args:
        weight: multiplier of this term in the total loss (>= 0; 0 switches the term off).
        target: `teacher` (cached teacher scores) or `gold` (labels).
    """

    def __init__(self, weight: float = 1.0, target: str = "teacher") -> None:
        super().__init__()
        if not isinstance(weight, (int, float)) or math.isnan(weight) or weight < 0:
            raise ValueError(f"objective weight is {weight!r}; expected a number >= 0")
        if target not in ("teacher", "gold"):
            raise ValueError(f"objective target is {target!r}; expected 'teacher' or 'gold'")
        self.weight = float(weight)
        self.target = target

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        if scores.shape != targets.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)}, targets {tuple(targets.shape)}; expected equal")
        return F.mse_loss(scores, targets)
