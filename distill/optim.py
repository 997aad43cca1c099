"""The optimiser and learning-rate schedule of every model distill trains (a teacher, `DistillModule`).

A leaf module (torch, Lightning and transformers only): `teachers/` and `distill.module` both import it, so the
student's optimiser does not come from the teacher's file.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from transformers import get_linear_schedule_with_warmup


def adamw_with_warmup(module: pl.LightningModule, lr: float, weight_decay: float, warmup_ratio: float,
                      lr_by_prefix: dict[str, float] | None = None) -> dict:
    """AdamW with linear warm-up and linear decay, stepped per optimiser step.

    Not LightningCLI's `lr_scheduler`: that steps per epoch and cannot know the total number of steps,
    which the trainer only knows once the data is attached (`estimated_stepping_batches`).
    `lr_by_prefix` gives parameters whose name starts with a prefix their own peak learning rate.
    """
    groups: dict[tuple[float, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        group_lr = next((v for k, v in (lr_by_prefix or {}).items() if name.startswith(k)), lr)
        decay = weight_decay if p.ndim >= 2 else 0.0  # no decay on biases and LayerNorm weights
        groups.setdefault((group_lr, decay), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()])
    total = int(module.trainer.estimated_stepping_batches)
    # estimated_stepping_batches builds the train loader before a checkpoint's loop state is restored, and the
    # fit loop would then reuse that loader without loading its state (pytorch-lightning 2.6; Lightning issue
    # #20550, fixes proposed in PRs #21765 and #21770): drop the private `_combined_loader` so the fit loop builds
    # it again after the restore, and resumes mid-epoch at the right batch
    module.trainer.fit_loop._combined_loader = None
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total), total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
