"""Distillation objectives, one per file; this list is the registry."""

from distill.losses.embedding_mse import EmbeddingMSE
from distill.losses.info_nce import InfoNCE
from distill.losses.listwise_kl import ListwiseKL
from distill.losses.margin_mse import MarginMSE
from distill.losses.matryoshka import Matryoshka2D
from distill.losses.score_regression import ScoreRegression

__all__ = ["EmbeddingMSE", "InfoNCE", "ListwiseKL", "MarginMSE", "Matryoshka2D", "ScoreRegression"]
