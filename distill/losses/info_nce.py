"""InfoNCE / MultipleNegativesRanking: in-batch (and cross-rank) negatives, optional hard negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.score_regression import check_weight


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank in rank order, keeping the autograd graph.

    torch's differentiable all_gather sums the gradients that all ranks send back to each slice (a
    reduce-scatter), so rank r's embeddings receive the gradient of every rank's loss, not only its own.
    Every rank must pass the same shape (Lightning's distributed sampler pads ranks to equal batches).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class InfoNCE(nn.Module):
    """Cross-entropy of each query against its positive among all candidates (MultipleNegativesRankingLoss).

    Candidates are every positive in the global batch, then every hard negative: under DDP the positives and
    negatives of all ranks are gathered with gradients, so a global batch of `world * batch` queries sees
    `world * batch * (1 + k)` candidates. The layout, identical on every rank and in one process on the
    concatenated batch, is

        columns [0, W*B)          positives of rank 0, 1, ..., W-1 (B each, in batch order)
        columns [W*B, W*B*(1+k))  hard negatives of rank 0, 1, ..., W-1 (B*k each)

    so the positive of local query i on rank r sits at column `r*B + i` (negatives are appended after *all*
    positives, never interleaved per rank: that is where an offset bug hides). Each rank averages over its own
    queries; DDP's gradient mean over ranks then equals the one-process gradient of the concatenated batch,
    because the gather's backward sums every rank's gradient into each slice.

    `symmetric` adds the reverse direction (each positive against all queries of the global batch) and
    averages the two. Similarity is the cosine times `scale` (sentence-transformers' default 20).

    Shapes: query, positive (batch, dim); negatives (batch, k, dim) or None.
    Reference: van den Oord et al., 2018, arXiv:1807.03748 (InfoNCE); Henderson et al., 2017,
    arXiv:1705.00652 (in-batch negatives); Karpukhin et al., 2020, arXiv:2004.04906 (DPR, hard negatives).

    Args:
        weight: multiplier of this term in the total loss (>= 0; 0 switches the term off).
        scale: inverse temperature of the cosine similarities.
        symmetric: also rank the queries for each positive.
        gather: under DDP, use every rank's candidates as negatives (off: each rank only its own).
        hard_negatives: use the grouped data's negatives (columns 1..k); off: in-batch negatives only.
    """

    target = None
    inputs = "embeddings"

    def __init__(self, weight: float = 1.0, scale: float = 20.0, symmetric: bool = False, gather: bool = True,
                 hard_negatives: bool = True) -> None:
        super().__init__()
        self.weight = check_weight(weight, "InfoNCE")
        if not scale > 0:
            raise ValueError(f"InfoNCE scale is {scale!r}; expected a number > 0")
        self.scale, self.symmetric, self.gather, self.hard_negatives = float(scale), symmetric, gather, hard_negatives

    def forward(self, query: Tensor, positive: Tensor, negatives: Tensor | None = None) -> Tensor:
        batch = query.shape[0]
        if positive.shape != query.shape:
            raise ValueError(f"InfoNCE got query {tuple(query.shape)} and positive {tuple(positive.shape)}; "
                             f"expected equal shapes (batch, dim)")
        if negatives is not None and (negatives.dim() != 3 or negatives.shape[0] != batch):
            raise ValueError(f"InfoNCE negatives have shape {tuple(negatives.shape)}; expected ({batch}, k, dim)")
        query, positive = F.normalize(query.float(), dim=-1), F.normalize(positive.float(), dim=-1)
        gather = gather_with_grad if self.gather else (lambda x: x)
        offset = rank() * batch if self.gather else 0
        candidates = [gather(positive)]  # (W*B, dim)
        if negatives is not None and self.hard_negatives:
            flat = F.normalize(negatives.float(), dim=-1).reshape(-1, negatives.shape[-1])  # (B*k, dim)
            candidates.append(gather(flat))  # (W*B*k, dim), after all positives
        labels = torch.arange(batch, device=query.device) + offset
        logits = self.scale * query @ torch.cat(candidates).T  # (B, W*B*(1+k))
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            reverse = self.scale * positive @ gather(query).T  # (B, W*B)
            loss = (loss + F.cross_entropy(reverse, labels)) / 2
        return loss
