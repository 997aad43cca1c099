"""Distillation objectives, one per file; this list is the registry."""

from distill.losses.score_regression import ScoreRegression

__all__ = ["ScoreRegression"]
