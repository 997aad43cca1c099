"""Score regression: the DSE objective."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_weight(weight: float, owner: str = "objective") -> float:
    """A loss weight as float; a negative or non-numeric one is a one-line error naming the key to fix."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or math.isnan(weight) or weight < 0 \
            or math.isinf(weight):
        raise ValueError(f"{owner} weight is {weight!r}; expected a finite number >= 0: fix "
                         f"model.init_args.objectives.<name>.init_args.weight")
    return float(weight)


class ScoreRegression(nn.Module):
    """MSE between a student's pair scores and targets on [0, 1].

    `target="teacher"` regresses the teacher's cached score, mapped through the cache manifest's
    `score_transform` (DSE: Barkan et al., AAAI 2020, arXiv:1908.05161); `target="gold"` regresses the gold
    label mapped from the data's `label_range`. The module applies it to every scoring mode the student has:
    the cosine (regressed directly onto the [0, 1] target, as sentence-transformers' CosineSimilarityLoss)
    and, with a DSE head, the head's score.

    Targets that are not finite (NaN: a silver pair mined without a gold label) are left out of the mean, so
    gold and teacher terms can be combined on a mix of labelled and unlabelled pairs; a batch with no finite
    target contributes 0.

    Shapes: scores, targets (batch,) or (batch, n_candidates) on grouped data.

    Args:
        weight: multiplier of this term in the total loss (>= 0; 0 switches the term off).
        target: `teacher` (cached teacher scores) or `gold` (labels).
        target_range: where the [0, 1] targets are mapped before the MSE (affinely). For a cosine-mode student
            whose cosines live in a narrow band (multilingual-e5: unrelated sentences ~0.7), e.g. [0.7, 1.0]
            asks for a ranking without dragging every cosine to [0, 1] — which fights embedding-level KD onto
            the same model's vectors. Keep the default with a DSE head (its scores are on [0, 1]).
    """

    inputs = "pair_scores"

    def __init__(self, weight: float = 1.0, target: str = "teacher",
                 target_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        low, high = (float(x) for x in target_range)
        if not low < high:
            raise ValueError(f"objective target_range {list(target_range)} is empty or reversed; expected [low, high] "
                             f"with low < high")
        self.target_range = (low, high)
        self.weight = check_weight(weight, "ScoreRegression")
        if target not in ("teacher", "gold"):
            raise ValueError(f"objective target is {target!r}; expected 'teacher' or 'gold'")
        self.target = target

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        if scores.shape != targets.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)}, targets {tuple(targets.shape)}; expected equal")
        low, high = self.target_range
        targets = low + targets * (high - low)
        known = torch.isfinite(targets)
        if bool(known.all()):
            return F.mse_loss(scores, targets.to(scores.dtype))
        if not bool(known.any()):
            return scores.sum() * 0.0  # keeps the graph (DDP expects every parameter to get a gradient)
        return F.mse_loss(scores[known], targets[known].to(scores.dtype))
