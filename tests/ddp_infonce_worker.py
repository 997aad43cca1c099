"""Worker of tests/test_ddp.py: one rank of a 2-process gloo group computing InfoNCE under DDP."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def encode_batch(student: torch.nn.Module, tokens: dict[str, torch.Tensor], batch: int, k: int) -> tuple:
    """Queries, positives and (batch, k) negatives of pre-tokenised rows, in one forward pass."""
    emb = student(tokens["input_ids"], tokens["attention_mask"])
    q, p, n = emb[:batch], emb[batch:2 * batch], emb[2 * batch:]
    return q, p, (n.view(batch, k, -1) if k else None)


def shard(tokens: dict[str, torch.Tensor], total: int, k: int, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s rows of the global batch (queries, positives, negatives kept in that order)."""
    b = total // world
    rows = (list(range(rank * b, (rank + 1) * b)) + list(range(total + rank * b, total + (rank + 1) * b))
            + list(range(2 * total + rank * b * k, 2 * total + (rank + 1) * b * k)))
    return {key: v[rows] for key, v in tokens.items()}


def worker(rank: int, world: int, port: int, backbone: str, cases: list[tuple], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from distill.losses import InfoNCE
    from students import BiEncoder

    results = []
    for tokens, total, k, symmetric in cases:
        torch.manual_seed(0)
        student = BiEncoder(backbone=backbone, max_seq_length=16).eval()  # dropout off
        model = DistributedDataParallel(student)
        local = shard(tokens, total, k, rank, world)
        q, p, n = encode_batch(model, local, total // world, k)
        loss = InfoNCE(symmetric=symmetric)(q, p, n)
        loss.backward()
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        grads = {name: prm.grad.clone() for name, prm in student.named_parameters() if prm.grad is not None}
        results.append({"losses": torch.stack(losses), "grads": grads})
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()
