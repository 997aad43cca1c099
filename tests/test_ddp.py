"""InfoNCE under 2-process CPU DDP (gloo) equals one process on the concatenated batch: loss and gradients."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from ddp_infonce_worker import encode_batch, worker

from distill.losses import InfoNCE
from students import BiEncoder

WORLD, TOTAL = 2, 6  # 3 queries per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tokens(k: int, seed: int) -> dict[str, torch.Tensor]:
    """Global batch: TOTAL queries, TOTAL positives, TOTAL * k negatives as random token ids of random lengths
    (ids drawn directly: the tiny vocab's tokenizer maps most words to [UNK], which makes texts look alike)."""
    g = torch.Generator().manual_seed(seed)
    rows = TOTAL * (2 + k)
    ids = torch.randint(5, 40, (rows, 16), generator=g)
    lengths = torch.randint(4, 17, (rows,), generator=g)
    mask = (torch.arange(16).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids[:, 0], ids = 2, ids * mask  # [CLS] first, [PAD] (0) after each row's length
    return {"input_ids": ids, "attention_mask": mask}


def test_info_nce_under_ddp_equals_one_process(tiny_backbone, tmp_path):
    """Gathered negatives with a wrong rank offset, negatives interleaved per rank (sentence-transformers
    PR #3453), or a gather whose backward drops the other ranks' gradients all keep a plausible loss but
    train on the wrong targets or with gradients scaled by the world size: compare with one process, with and
    without k hard negatives, and the symmetric form."""
    cases = [(_tokens(k, seed), TOTAL, k, symmetric)
             for k, seed, symmetric in ((0, 0, False), (2, 1, False), (2, 2, True))]
    out = tmp_path / "ranks.pt"
    mp.spawn(worker, args=(WORLD, _free_port(), tiny_backbone, cases, str(out)), nprocs=WORLD, join=True)
    results = torch.load(out, weights_only=True)
    for (tokens, total, k, symmetric), got in zip(cases, results):
        torch.manual_seed(0)
        student = BiEncoder(backbone=tiny_backbone, max_seq_length=16).eval()
        q, p, n = encode_batch(student, tokens, total, k)
        loss = InfoNCE(symmetric=symmetric)(q, p, n)
        loss.backward()
        assert got["losses"].mean().item() == pytest.approx(loss.item(), abs=1e-5), (k, symmetric)
        assert not torch.allclose(got["losses"][0], got["losses"][1])  # the ranks really saw different rows
        reference = {name: prm.grad for name, prm in student.named_parameters() if prm.grad is not None}
        assert reference.keys() == got["grads"].keys()
        worst = max((reference[name] - got["grads"][name]).abs().max().item() for name in reference)
        assert worst < 1e-5, (k, symmetric, worst)
