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


def bitext_retrieval(queries: Tensor, corpus: Tensor, top_k: int = 10) -> dict[str, float]:
    """Query i's translation is corpus row i: accuracy@1 and nDCG@top_k of finding it by cosine.

    A translation ties with another candidate only if that candidate scores exactly as high; ties count against
    the query (rank = the number of other candidates scoring at least as high), so a degenerate encoder that maps
    everything to one vector scores 0, not 1. The one implementation behind `distill test`'s Tatoeba and FLORES
    metrics and `distill bench`'s Tatoeba rows.
    """
    sims = torch.nn.functional.normalize(queries.float(), dim=-1) @ torch.nn.functional.normalize(
        corpus.float(), dim=-1).T
    rank = (sims >= sims.diagonal().unsqueeze(1)).sum(1) - 1  # 0 = the translation alone is first
    ndcg = torch.where(rank < top_k, 1 / torch.log2(rank.float() + 2), torch.zeros_like(rank, dtype=torch.float))
    return {"accuracy": (rank == 0).float().mean().item(), f"ndcg@{top_k}": ndcg.mean().item()}


def _both_directions(encode: Any, name: str, xx: list[str], en: list[str] | Tensor) -> dict[str, float]:
    ex = encode(xx)
    ee = en if isinstance(en, Tensor) else encode(en)
    return {f"{name}-en": bitext_retrieval(ex, ee)["accuracy"], f"en-{name}": bitext_retrieval(ee, ex)["accuracy"]}


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
        # metric keys in ISO 639-1 whatever code the caller used (`deu`, `de`)
        out.update(_both_directions(encode, iso(lang), xx, en))
    return out


def flores_code(lang: str) -> str:
    """ISO 639-1 (`de`) or FLORES code (`deu_Latn`) -> the FLORES code of catalog `flores200/<code>/<split>`;
    an unknown code is a one-line error with the close matches."""
    import difflib

    from distill.catalog import CatalogError
    from distill.languages import FLORES_CODES, iso

    if lang in FLORES_CODES:
        return lang
    by_iso = {iso(c): c for c in reversed(FLORES_CODES)}
    if lang in by_iso:
        return by_iso[lang]
    close = difflib.get_close_matches(lang, [*by_iso, *FLORES_CODES], n=4, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise CatalogError(f"flores200: unknown language code {lang!r}{hint}"
                       f"; use an ISO 639-1 code or a FLORES code ({', '.join(FLORES_CODES[:6])}, ...)")


def translation_accuracy(encode: Any, languages: list[str], split: str = "devtest",
                         max_sentences: int | None = None) -> dict[str, float]:
    """Translation retrieval accuracy on FLORES-200 `split` (`dev` or `devtest`), both directions per language
    (`de-en`: German queries against the English sentences, `en-de` the reverse); the English side, the same
    lines in every language, is embedded once."""
    from distill.catalog import load
    from distill.languages import iso

    english: Tensor | None = None
    out = {}
    for lang in languages:
        rows = load(f"flores200/{flores_code(lang)}/{split}").rows
        xx, en = list(rows["translation"]), list(rows["source"])
        if max_sentences:
            xx, en = xx[:max_sentences], en[:max_sentences]
        if english is None:
            english = encode(en)
        out.update(_both_directions(encode, iso(flores_code(lang)), xx, english))
    return out


class MultilingualEvaluation(Callback):
    """Retrieval metrics beside the per-language STS ones: Tatoeba after `distill test` (logged as
    `test/tatoeba_acc/de-en`, `test/tatoeba_acc/en-de`, DESIGN.md); FLORES-200 translation retrieval at the end of
    every validation (`val/translation_acc/de-en` on `dev`, averaged into `val/translation_acc`) and of the test
    (`test/translation_acc/de-en` on `devtest`); and a per-language table of every test metric, written as
    `multilingual.json` / `multilingual.md` in the run's log folder and logged to W&B when it is on.

    Args:
        tatoeba: languages (ISO 639-1 or Tatoeba codes) for bitext retrieval, trained on or not.
        max_sentences: sentences per Tatoeba and FLORES devtest language (smoke runs; all by default).
        batch_size: encoding batch size.
        flores: languages (ISO 639-1 or FLORES codes) for translation retrieval on FLORES `devtest` (test).
        flores_val: languages for translation retrieval on FLORES `dev` after each validation (model choices;
            keep FLORES `dev` out of the training data then).
        flores_val_sentences: lines of FLORES `dev` per validation language (the first N; all 997 by default).
    """

    def __init__(self, tatoeba: list[str] | None = None, max_sentences: int | None = None,
                 batch_size: int = 64, flores: list[str] | None = None, flores_val: list[str] | None = None,
                 flores_val_sentences: int | None = None) -> None:
        from distill.catalog import tatoeba_code

        for lang in tatoeba or []:
            tatoeba_code(lang)  # an unknown code fails at start-up, not after the test loop
        for lang in [*(flores or []), *(flores_val or [])]:
            flores_code(lang)
        self.tatoeba, self.max_sentences, self.batch_size = list(tatoeba or []), max_sentences, batch_size
        self.flores, self.flores_val = list(flores or []), list(flores_val or [])
        self.flores_val_sentences = flores_val_sentences

    def _encode(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[list[str]], Tensor]:
        student = pl_module.student

        def encode(texts: list[str]) -> Tensor:
            # in the run's precision, as test_step is (bf16-mixed: ~3x faster on CPU); hooks run outside it
            with trainer.precision_plugin.forward_context():
                return student.encode(texts, batch_size=self.batch_size)

        return encode

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.flores_val or trainer.sanity_checking:
            return
        encode = self._encode(trainer, pl_module)
        values = translation_accuracy(encode, self.flores_val, "dev", self.flores_val_sentences)
        pl_module.log_dict({f"val/translation_acc/{k}": v for k, v in values.items()})
        pl_module.log("val/translation_acc", sum(values.values()) / len(values))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tatoeba:
            values = tatoeba_accuracy(self._encode(trainer, pl_module), self.tatoeba, self.max_sentences)
            pl_module.log_dict({f"test/tatoeba_acc/{k}": v for k, v in values.items()})
        if self.flores:
            values = translation_accuracy(self._encode(trainer, pl_module), self.flores, "devtest", self.max_sentences)
            pl_module.log_dict({f"test/translation_acc/{k}": v for k, v in values.items()})

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
