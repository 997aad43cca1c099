"""MarginMSE: distil the teacher's margins between a positive and each negative."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.score_regression import check_weight


class MarginMSE(nn.Module):
    """MSE between student and teacher margins `s(q, c_0) - s(q, c_j)` for every negative `c_j`.

    Only differences are matched, so the student's scores need not live on the teacher's scale (a cosine in
    [-1, 1] against a sigmoid score in [0, 1]): use it on grouped data where each query brings a positive and
    k negatives, all scored by the teacher.

    Shapes: student, teacher (batch, 1 + k); column 0 is the positive.
    Reference: Hofstätter et al., 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation", arXiv:2010.02666.

    Args:
        weight: multiplier of this term in the total loss (>= 0; 0 switches the term off).
    """

    target = "teacher"
    inputs = "group_scores"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = check_weight(weight, "MarginMSE")

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape or student.dim() != 2 or student.shape[1] < 2:
            raise ValueError(f"MarginMSE got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; "
                             f"expected equal shapes (batch, 1 + k) with k >= 1 negatives")
        student_margin = student[:, :1] - student[:, 1:]  # (batch, k)
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return F.mse_loss(student_margin, teacher_margin.to(student_margin.dtype))
