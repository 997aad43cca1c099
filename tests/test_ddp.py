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


def _sets_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0 sees batches of `de` and `fr`, rank 1 only of `de` (a small `fr` dev set); `ja` is seen by none."""
    import datetime
    import os

    import torch.distributed as dist

    from distill.evaluation import SpearmanByMode, compute_sets

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank that skips a collective compute leaves the other waiting: fail in seconds, not never
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
    sets = {name: SpearmanByMode(("cosine",)) for name in ("de", "fr", "ja")}
    de = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0]][rank])
    sets["de"].update({"cosine": de}, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]][rank]))
    if rank == 0:
        sets["fr"].update({"cosine": torch.tensor([1.0, 3.0, 2.0])}, torch.tensor([1.0, 2.0, 3.0]))

    def sum_across_ranks(counts: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(counts)
        return counts

    values = compute_sets(sets, sum_across_ranks)
    torch.save({name: v["cosine"] for name, v in values.items()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_every_rank_computes_every_set_a_rank_saw(tmp_path):
    """Per-set validation under 2-process DDP where one rank saw no batch of `fr`: both ranks compute `fr`
    (a rank skipping it used to leave the other waiting in the gather) and agree on the gathered value."""
    out = str(tmp_path / "sets")
    mp.spawn(_sets_worker, args=(WORLD, _free_port(), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    assert [sorted(r) for r in ranks] == [["de", "fr"], ["de", "fr"]]  # `ja`, seen by no rank, by none
    # gathered: de over all 6 scores (one swap: 1 - 6 * 2 / (6 * 35) = 0.9428...), fr over rank 0's 3 (0.5)
    for r in ranks:
        assert r["de"].item() == pytest.approx(1 - 6 * 2 / (6 * 35), abs=1e-5)
        assert r["fr"].item() == pytest.approx(0.5, abs=1e-5)


def test_a_set_no_process_saw_is_not_computed():
    """One process (the sanity check's few batches): only the sets that got a batch are computed."""
    from distill.evaluation import SpearmanByMode, compute_sets

    sets = {"de": SpearmanByMode(("cosine",)), "fr": SpearmanByMode(("cosine",))}
    sets["de"].update({"cosine": torch.tensor([1.0, 2.0, 3.0])}, torch.tensor([3.0, 2.0, 1.0]))
    values = compute_sets(sets, lambda counts: counts)
    assert list(values) == ["de"] and values["de"]["cosine"].item() == pytest.approx(-1.0, abs=1e-5)
