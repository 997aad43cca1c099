"""Listwise KL: match the student's distribution over a query's candidates to the teacher's."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.score_regression import check_weight


class ListwiseKL(nn.Module):
    """KL(teacher || student) between softmax distributions over each query's candidates.

    `p = softmax(teacher / teacher_temperature)`, `q = softmax(student / temperature)`, loss
    `sum_j p_j (log p_j - log q_j)` averaged over queries. The two temperatures differ because the scores do:
    a cosine spans [-1, 1] (temperature ~0.05 sharpens it like InfoNCE's scale 20), a teacher score in [0, 1]
    needs its own. Use on grouped data (query, positive, k negatives) scored by the teacher.

    Shapes: student, teacher (batch, n_candidates).
    Reference: Hinton et al., 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531; as a
    listwise ranking distillation, e.g. RocketQAv2 (Ren et al., 2021, arXiv:2110.07367).

    Args:
        weight: multiplier of this term in the total loss (>= 0; 0 switches the term off).
        temperature: divides the student's scores before the softmax.
        teacher_temperature: divides the teacher's scores before the softmax.
    """

    target = "teacher"
    inputs = "group_scores"

    def __init__(self, weight: float = 1.0, temperature: float = 0.05, teacher_temperature: float = 0.1) -> None:
        super().__init__()
        self.weight = check_weight(weight, "ListwiseKL")
        for name, value in (("temperature", temperature), ("teacher_temperature", teacher_temperature)):
            if not value > 0:
                raise ValueError(f"ListwiseKL {name} is {value!r}; expected a number > 0")
        self.temperature, self.teacher_temperature = float(temperature), float(teacher_temperature)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape or student.dim() != 2:
            raise ValueError(f"ListwiseKL got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; "
                             f"expected equal shapes (batch, n_candidates)")
        log_q = F.log_softmax(student.float() / self.temperature, dim=-1)
        log_p = F.log_softmax(teacher.float() / self.teacher_temperature, dim=-1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
