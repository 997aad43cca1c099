"""Batching: the collators that pad each batch to its own width and the length-grouped training order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler


class PairCollator:
    """Pads each batch to its own longest sequence (never to max_length).

    Both sides of a bi-encoder pair share one width, so the student encodes them in one forward pass.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        batch: dict[str, Any] = {"pair_id": [r["pair_id"] for r in rows]}
        sequences = [k for k in rows[0] if k.endswith(("input_ids", "attention_mask", "token_type_ids"))]
        width = max(len(r[k]) for r in rows for k in sequences) if sequences else 0
        for key in sequences:
            pad = self.pad_token_id if key.endswith("input_ids") else 0
            batch[key] = torch.tensor([r[key] + [pad] * (width - len(r[key])) for r in rows])
        for key in ("gold", "score", "label", "t_a", "t_b"):  # t_a, t_b: teacher embeddings (embedding KD)
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        if "eval_set" in rows[0]:  # multilingual evaluation: the named set (language or xx-en) of each pair
            batch["eval_set"] = [r["eval_set"] for r in rows]
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Random order in which neighbours have similar lengths, so per-batch padding stays small.

    Shuffles, cuts the order into windows of `window` rows, sorts each window by length (`window=1`: a plain
    shuffle). The order depends only on the seed and the epoch Lightning sets, never on the global RNG, so a
    resumed run sees the same order. Under DDP Lightning wraps it and shards this order across ranks.
    """

    def __init__(self, lengths: list[int], window: int, seed: int = 0) -> None:
        self.lengths, self.window, self.seed, self.epoch = lengths, window, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        for start in range(0, len(order), self.window):
            yield from sorted(order[start:start + self.window], key=self.lengths.__getitem__)

    def __len__(self) -> int:
        return len(self.lengths)


class GroupCollator:
    """Pads a batch of groups: the query and every candidate share one width (one forward pass).

    Output: `q_input_ids`, `q_attention_mask` (batch, width); `c_input_ids`, `c_attention_mask`
    (batch * n_candidates, width), group-major (candidate j of group i at row i * n + j); `score`
    (batch, n_candidates) where the train split has a cache.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        queries = [r["q_input_ids"] for r in rows]
        candidates = [c for r in rows for c in r["c_input_ids"]]
        width = max(len(x) for x in queries + candidates)

        def pad(seqs: list[list[int]], value: int) -> Tensor:
            return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

        batch: dict[str, Any] = {
            "pair_id": [r["pair_id"] for r in rows],
            "q_input_ids": pad(queries, self.pad_token_id),
            "q_attention_mask": pad([[1] * len(q) for q in queries], 0),
            "c_input_ids": pad(candidates, self.pad_token_id),
            "c_attention_mask": pad([[1] * len(c) for c in candidates], 0),
        }
        if "score" in rows[0]:
            batch["score"] = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        return batch


class LengthSortedSampler(Sampler[int]):
    """Every row once, longest first, so each evaluation batch pads to about its own rows' length.

    For validation and test, whose metrics do not depend on row order (Spearman per set, gathered whole): on the
    stsb_multi_mt test sets it halves the tokens the batches carry and the time of `distill test`
    (docs/eval-order-report.md). Longest first, so the batch that needs the most memory comes before any time is
    spent. Under DDP Lightning wraps it and deals this order out across ranks, so each rank still sees similar
    lengths side by side.
    """

    def __init__(self, lengths: np.ndarray) -> None:
        # stable: rows of equal length keep their file order, so the order is reproducible
        self.order = np.argsort(-np.asarray(lengths), kind="stable").tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
