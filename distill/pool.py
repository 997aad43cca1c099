"""A monolingual sentence pool for embedding-level distillation: a smaller or simpler student learns to put each
sentence where a stronger bi-encoder puts it.

This is sentence-transformers' layer-reduction recipe (a student with fewer layers regressed onto the full model's
embeddings over many unlabelled sentences) and model2vec's tokenlearn (a static student fitted the same way). A
few thousand scored pairs teach a shallow or static student the teacher's scores on their own vocabulary; a large
pool of plain sentences teaches it the reference's whole geometry, on every token the pool holds. The pool's
sentences travel as pair rows of two different sentences, each regressed onto its own teacher vector (one forward
pass per sentence), mixed with the teacher-scored STS-B pairs of `MultilingualDataModule` when `pivot_languages`
is set, so pair-score KD and embedding KD train in one run.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from distill import catalog
from distill.cache_keys import normalise
from distill.catalog_formats import read_lines
from distill.data import DataError
from distill.data.reading import read_table
from distill.multilingual import PIVOT, _pair_row
from distill.parallel import EmbeddingKDDataModule


def pool_texts(source: str) -> list[str]:
    """The sentences of one pool source, in file order.

    Args:
        source: a catalog name: a pairs set gives both sides (`stsb/train`), a parallel set its English side
            (`tatoeba_challenge/deu`); a `.txt` file, one sentence per line; or a table file (.csv, .tsv, .jsonl,
            .parquet) with a `text` column.

    Raises:
        DataError: an unknown name, a missing file or column, a retrieval set.
    """
    if catalog.is_name(source):
        try:
            entry = catalog.load(source)
        except catalog.CatalogError as err:
            raise DataError(str(err)) from None
        if entry.kind == "parallel":  # the English side only: the teacher bi-encoder reads English
            return entry.rows.with_format("arrow")["source"].to_pylist()
        if entry.kind != "pairs":
            raise DataError(f"data.init_args.pool: {source} is a {entry.kind} set; give a pairs or parallel set, a "
                            f".txt file (one sentence per line) or a table with a `text` column")
        return catalog.texts(source)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data.init_args.pool: {source} is neither a catalog name nor a file")
    if path.suffix.lower() == ".txt":
        return read_lines(path)
    frame = read_table(path, None)
    if "text" not in frame.columns:
        raise DataError(f"{source}: no `text` column (columns: {', '.join(map(str, frame.columns))}); name the "
                        f"sentence column `text`, or give a .txt file with one sentence per line")
    return [str(t) for t in frame["text"]]


class SentencePoolDataModule(EmbeddingKDDataModule):
    """Embedding-level distillation over a sentence pool, optionally mixed with teacher-scored pairs.

    Train rows: the pool's sentences (deduplicated, every sentence of an `exclude` set dropped, a seeded random
    `max_sentences` of them) two by two as pair rows — `text_a` and `text_b` two different sentences, each its own
    `src_*` — so `EmbeddingMSE` regresses each onto the teacher bi-encoder's vector of itself; their gold and
    teacher scores are unknown (NaN), which the score objectives leave out. With `pivot_languages` (`[en]` for
    STS-B train), the teacher-scored pairs of `MultilingualDataModule` join them with their cached scores from
    `cache_dir`. Validation and test: as `MultilingualDataModule` (STS per language). The counts are in
    `self.report` and printed.

    Args:
        pool: sentence sources, each as `pool_texts` takes them.
        max_sentences: pool sentences kept after deduplication and exclusion (seeded random subset; None: all).
        exclude: catalog sets (pairs or parallel, every side) whose sentences never enter the pool: the
            evaluation sets.
        pivot_languages: stsb_multi_mt languages of teacher-scored pairs mixed in (None or []: the pool alone).
        (the rest): as `MultilingualDataModule`; `teacher_embeddings` is required.
    """

    def __init__(
        self,
        pool: list[str],
        max_sentences: int | None = None,
        exclude: list[str] = ["stsb/dev", "stsb/test"],  # noqa: B006 - jsonargparse default
        pivot_languages: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # **kwargs: MultilingualDataModule's and PairDataModule's arguments (jsonargparse reads their signatures)
        if not pool:
            raise DataError("data.init_args.pool is empty; name at least one sentence source (a catalog set or file)")
        if max_sentences is not None and max_sentences < 2:
            raise DataError(f"data.init_args.max_sentences is {max_sentences}; expected >= 2 or null")
        if not kwargs.get("teacher_embeddings"):
            raise DataError("data.init_args.teacher_embeddings is unset: a sentence pool has nothing to learn without "
                            "a teacher bi-encoder's vectors; name one (a student folder or checkpoint, or a backbone)")
        super().__init__(**kwargs)
        self.report: dict[str, Any] = {}
        self._pool: list[str] | None = None

    def pool_sentences(self) -> list[str]:
        """The deduplicated, filtered, capped pool, in a seeded random order."""
        if self._pool is None:  # read once: prepare_data, the teacher's vectors and setup all need it
            self._pool = self._read_pool()
        return self._pool

    def _read_pool(self) -> list[str]:
        hp = self.hparams
        banned: set[str] = set()
        for name in hp.exclude:
            try:
                banned.update(normalise(t) for t in catalog.texts(name))
            except catalog.CatalogError as err:
                raise DataError(f"data.init_args.exclude: {err}") from None
        seen: set[str] = set()
        kept: list[str] = []
        read = excluded = empty = 0
        for source in hp.pool:
            for text in pool_texts(source):
                read += 1
                key = normalise(text)
                if not key:
                    empty += 1
                elif key in banned:
                    excluded += 1
                elif key not in seen:
                    seen.add(key)
                    kept.append(text)
        random.Random(hp.seed).shuffle(kept)
        kept = kept[:hp.max_sentences] if hp.max_sentences else kept
        kept = kept[:len(kept) - len(kept) % 2]  # two per row
        if not kept:
            raise DataError(f"data.init_args.pool: no sentence left of {read} read ({excluded} in an excluded set, "
                            f"{empty} empty); add sources or shorten data.init_args.exclude")
        self.report = {"sentences": len(kept), "read": read, "duplicates": read - excluded - empty - len(seen),
                       "dropped_excluded": excluded, "empty": empty, "excluded_sets": list(hp.exclude)}
        print(f"sentence pool: {len(kept)} sentences of {read} read ({excluded} dropped: in "
              f"{', '.join(hp.exclude) or 'no set'}; {self.report['duplicates']} duplicates)", flush=True)
        return kept

    what = "sentence pool"

    def kd_rows(self) -> list[dict[str, Any]]:
        pool = self.pool_sentences()
        return [_pair_row(a, b, math.nan, PIVOT, PIVOT, "", a, b) for a, b in zip(pool[::2], pool[1::2])]
