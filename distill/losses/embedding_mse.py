"""Embedding-level distillation (Reimers & Gurevych 2020)."""

from __future__ import annotations

from torch import Tensor, nn

from distill.losses.score_regression import check_weight


class EmbeddingMSE(nn.Module):
    """Squared distance between the student's embedding of a sentence and a frozen teacher bi-encoder's embedding
    of its source sentence.

    Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"
    (arXiv:2004.09813): the student maps a translation (and the source itself) onto the teacher's vector of the
    source, so every language lands where the teacher puts English. Here the loss is the squared L2 distance
    per sentence, averaged over sentences (their MSE times the dimension; 2 - 2 cos for unit vectors), so its
    size does not shrink with the embedding width and sits on the scale of the score objectives.

    Shapes: student, teacher (n, dim) -> scalar.

    Args:
        weight: multiplier of this term in the total loss (>= 0; 0 switches it off).
    """

    inputs = "embedding_targets"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = check_weight(weight, "EmbeddingMSE")

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"student embeddings have shape {tuple(student.shape)}, the teacher's "
                             f"{tuple(teacher.shape)}: the teacher bi-encoder must have the student's width")
        return (student - teacher.to(student.dtype)).pow(2).sum(-1).mean()
