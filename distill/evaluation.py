"""Evaluation: STS Spearman per scoring mode (torchmetrics, so DDP syncs it) and multilingual retrieval/tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torchmetrics import SpearmanCorrCoef


class SpearmanByMode(nn.Module):
    """STS Spearman of a student's scores against gold labels, one metric per scoring mode."""

    def __init__(self, modes: tuple[str, ...]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({m: SpearmanCorrCoef() for m in modes})

    def update(self, scores: dict[str, Tensor], gold: Tensor) -> None:
        for mode, metric in self.metrics.items():
            metric.update(scores[mode].float(), gold)

    def compute(self) -> dict[str, Tensor]:
        return {mode: metric.compute() for mode, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    @property
    def update_count(self) -> int:
        """Batches this process added since the last reset."""
        return next(iter(self.metrics.values())).update_count


def compute_sets(sets: Mapping[str, SpearmanByMode],
                 reduce: Callable[[Tensor], Tensor]) -> dict[str, dict[str, Tensor]]:
    """Spearman of every named set that any process saw a batch of, computed on every process.

    Under DDP `compute()` is collective (it gathers every rank's scores): a rank that skipped a set because it
    saw none of its batches (a small dev set, the sanity check) would leave the others waiting forever. So the
    batch counts are summed across ranks first (`reduce`, e.g. the strategy's sum all-reduce) and every rank
    computes the same sets; a set no rank saw is skipped everywhere.
    """
    if not sets:
        return {}
    device = next(iter(next(iter(sets.values())).metrics.values())).device
    counts = reduce(torch.tensor([float(m.update_count) for m in sets.values()], device=device))
    return {name: metric.compute() for (name, metric), seen in zip(sets.items(), counts.tolist()) if seen > 0}


def tatoeba_accuracy(encode: Any, languages: list[str], max_sentences: int | None = None) -> dict[str, float]:
    """Bitext retrieval accuracy on Tatoeba, both directions: `de-en` (German query, English corpus) and `en-de`.

    `encode(texts) -> (n, dim)` embeds sentences; a query is right when its own translation is the nearest of the
    corpus by cosine (the LASER test protocol, ≤ 1000 sentences per language; ties count as wrong).
    """
    from distill.catalog import read_tatoeba
    from distill.languages import iso

    out = {}
    for lang in languages:
        xx, en = read_tatoeba(lang)
        if max_sentences:
            xx, en = xx[:max_sentences], en[:max_sentences]
        name = iso(lang)  # metric keys in ISO 639-1 whatever code the caller used (`deu`, `de`)
        ex = torch.nn.functional.normalize(encode(xx).float(), dim=-1)
        ee = torch.nn.functional.normalize(encode(en).float(), dim=-1)
        for key, q, c in ((f"{name}-en", ex, ee), (f"en-{name}", ee, ex)):
            sims = q @ c.T
            out[key] = (sims.argmax(1) == torch.arange(len(q))).float().mean().item()
    return out


class MultilingualEvaluation(Callback):
    """After `distill test`: Tatoeba retrieval for `tatoeba` languages (logged as `test/tatoeba_acc/de-en` and
    `test/tatoeba_acc/en-de`, DESIGN.md) and a per-language table of every test metric, written as
    `multilingual.json` / `multilingual.md` in the run's log folder and logged to W&B when it is on.

    Args:
        tatoeba: languages (ISO 639-1 or Tatoeba codes) for bitext retrieval, trained on or not.
        max_sentences: sentences per Tatoeba language (all ≤ 1000 by default).
        batch_size: encoding batch size.
    """

    def __init__(self, tatoeba: list[str] | None = None, max_sentences: int | None = None,
                 batch_size: int = 64) -> None:
        from distill.catalog import tatoeba_code

        for lang in tatoeba or []:
            tatoeba_code(lang)  # an unknown code fails at start-up, not after the test loop
        self.tatoeba, self.max_sentences, self.batch_size = list(tatoeba or []), max_sentences, batch_size

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.tatoeba:
            return
        student = pl_module.student
        values = tatoeba_accuracy(lambda texts: student.encode(texts, batch_size=self.batch_size), self.tatoeba,
                                  self.max_sentences)
        pl_module.log_dict({f"test/tatoeba_acc/{k}": v for k, v in values.items()})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = language_table({k: float(v) for k, v in trainer.callback_metrics.items()})
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "multilingual.json").write_text(json.dumps(table, indent=2))
        (folder / "multilingual.md").write_text(markdown_table(table) + "\n")
        print(markdown_table(table), flush=True)
        from distill import tracking

        tracking.log_table("test/multilingual", table)


def language_table(metrics: dict[str, float], split: str = "test") -> list[dict[str, Any]]:
    """`{split}/{metric}/{lang}` values -> one row per language or language pair, a column per metric."""
    rows: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == split:
            rows.setdefault(parts[2], {"set": parts[2]})[parts[1]] = round(value, 4)
    return sorted(rows.values(), key=lambda r: (r["set"].count("-"), r["set"]))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows (dicts) as a Markdown table, columns in first-seen order, empty cells where a row lacks one."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
