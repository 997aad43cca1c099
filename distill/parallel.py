"""Parallel data: (English source, translation) pairs for embedding-level alignment, and their datamodule.

Reimers & Gurevych (2020) make a monolingual teacher multilingual with parallel text alone: the student's
embeddings of a translation and of its English source are both regressed onto the teacher's embedding of the
source (`distill.losses.EmbeddingMSE`). Languages with no STS data but parallel text (most of them) are reached
this way. `read_parallel` reads any (source, translation[, lang]) rows: two line-aligned files, a table file, a
catalog name (`tatoeba_challenge/deu`, `flores200/deu_Latn/dev`) or a Hub id; `ParallelDataModule` mixes them
with the teacher-scored pivot pairs of `MultilingualDataModule` and drops every pair whose sentences occur in a
test set.
"""

from __future__ import annotations

import difflib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets

from distill import catalog
from distill.cache_join import ScoreCache, join_caches
from distill.cache_keys import normalise
from distill.catalog_formats import read_lines
from distill.data import DataError
from distill.data.reading import read_table
from distill.data.tokenised import warn_truncated
from distill.languages import FLORES_CODES, STSB_LANGUAGES, TATOEBA_CHALLENGE_CODES, TATOEBA_CODES, iso, native
from distill.multilingual import PIVOT, MultilingualDataModule, _pair_row, pivot_pairs, read_stsb_mt

COLUMNS = ("source", "translation")
#: the catalog's parallel corpora a language list expands to, with the codes each knows
CORPORA: dict[str, tuple[str, ...]] = {"tatoeba_challenge": TATOEBA_CHALLENGE_CODES, "flores200_dev": FLORES_CODES,
                                       "stsb_multi_mt_train": STSB_LANGUAGES}


def column(rows: Dataset, name: str) -> list[Any]:
    """A column as a list, read from Arrow at once (`rows[name]` iterates row by row in datasets 4)."""
    return rows.with_format("arrow")[name].to_pylist()  # honours a select()'s indices, unlike rows.data


def _check_texts(sources: list[str], translations: list[str], where: str, first_line: int = 1) -> None:
    for i, (s, t) in enumerate(zip(sources, translations)):
        if not isinstance(s, str) or not isinstance(t, str) or not s.strip() or not t.strip():
            side = "source" if not isinstance(s, str) or not s.strip() else "translation"
            raise DataError(f"{where}, line {i + first_line}: empty {side}; drop the pair from both sides or fill it")


def _line_aligned(source: str, translation: str, lang: str) -> Dataset:
    paths = [Path(source), Path(translation)]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file; fix the parallel source in the config")
    a, b = (read_lines(p) for p in paths)
    if len(a) != len(b):
        raise DataError(f"{paths[0]} has {len(a)} lines but {paths[1]} has {len(b)}; parallel files must be "
                        f"line-aligned (line i of one translates line i of the other): fix or re-export them")
    for i, (s, t) in enumerate(zip(a, b)):
        if not s.strip() or not t.strip():
            raise DataError(f"{paths[0] if not s.strip() else paths[1]}, line {i + 1}: empty line; drop line {i + 1} "
                            f"from both files or fill it")
    return Dataset.from_dict({"source": a, "translation": b, "lang": [lang] * len(a)})


def read_parallel(source: str | dict[str, str], lang: str | None = None) -> Dataset:
    """(English source, translation, lang) rows from one parallel source.

    Args:
        source: a catalog name of a parallel set (`tatoeba_challenge/deu`, `flores200/deu_Latn/dev`); a table
            file (.csv, .tsv, .jsonl, .parquet) or `hf:<id>[:<config>]:<split>` with columns `source`,
            `translation` and optionally `lang`; or `{source: <file>, translation: <file>, lang: <code>}`, two
            line-aligned text files.
        lang: the translations' language where the source does not say it (ISO 639-1).

    Raises:
        DataError: misaligned or missing files, an empty line (named), missing columns, no language.
    """
    if isinstance(source, dict):
        unknown = set(source) - {"source", "translation", "lang"}
        if unknown or not {"source", "translation"} <= set(source):
            raise DataError(f"parallel source {source}: expected keys source, translation[, lang] (two line-aligned "
                            f"files)")
        rows = _line_aligned(source["source"], source["translation"], source.get("lang") or lang or "")
    elif catalog.is_name(source) or source.startswith("hf:"):
        try:
            if source.startswith("hf:"):
                rows = _table(catalog.load_hf(source).to_pandas(), source, lang)
            else:
                entry = catalog.load(source)
                if entry.kind != "parallel":
                    raise DataError(f"{source} is a {entry.kind} set, not parallel text; give a parallel set "
                                    f"(tatoeba_challenge/<code>, flores200/<code>/dev) or a file")
                rows = entry.rows.remove_columns("lang").add_column("lang", [iso(x) for x in
                                                                             column(entry.rows, "lang")])
        except catalog.CatalogError as err:
            raise DataError(str(err)) from None
    else:
        rows = _table(read_table(Path(source), None), source, lang)
    if not all(column(rows, "lang")):
        raise DataError(f"parallel source {source}: no language for its translations; add a `lang` column or key")
    _check_texts(column(rows, "source"), column(rows, "translation"), str(source), 2 if isinstance(source, str) and
                 Path(source).suffix.lower() in (".csv", ".tsv") else 1)
    return rows


def _table(frame: Any, where: str, lang: str | None) -> Dataset:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))}); parallel "
                        f"tables need source, translation[, lang]")
    langs = frame["lang"].astype(str).tolist() if "lang" in frame.columns else [lang or ""] * len(frame)
    return Dataset.from_dict({"source": frame["source"].tolist(), "translation": frame["translation"].tolist(),
                              "lang": langs})


def check_parallel_languages(languages: list[str], corpora: list[str]) -> None:
    """Every language must be in at least one configured corpus; else a one-line error with close matches."""
    for corpus in corpora:
        if corpus not in CORPORA:
            raise DataError(f"data.init_args.corpora: unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}")
    known = sorted({iso(c) for corpus in corpora for c in CORPORA[corpus]} - {"en"})
    for lang in languages:
        if not any(native(lang, CORPORA[c]) for c in corpora) or lang == PIVOT:
            close = difflib.get_close_matches(lang, known, n=4, cutoff=0.4)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise DataError(f"data.init_args.parallel_languages: unknown language code {lang!r} for corpora "
                            f"{corpora}{hint}; use ISO 639-1 codes ({', '.join(known[:10])}, ...)")


def corpus_rows(corpus: str, lang: str) -> Dataset | None:
    """One catalog corpus's parallel rows for a language (ISO 639-1), or None if the corpus lacks it."""
    code = native(lang, CORPORA[corpus])
    if code is None:
        return None
    if corpus == "stsb_multi_mt_train":  # STS-B train pairs and their translations: both sides, row-aligned
        en, xx = read_stsb_mt(PIVOT, "train"), read_stsb_mt(code, "train")
        return Dataset.from_dict({"source": [*en.text_a, *en.text_b], "translation": [*xx.text_a, *xx.text_b],
                                  "lang": [lang] * (2 * len(en))})
    name = f"tatoeba_challenge/{code}" if corpus == "tatoeba_challenge" else f"flores200/{code}/dev"
    return read_parallel(name)


def test_sentences(languages: list[str]) -> tuple[set[str], list[str]]:
    """The normalised sentences of every test or validation set a parallel run must not train on: Tatoeba (LASER)
    and FLORES `dev`/`devtest` for `languages`, stsb_multi_mt dev and test for every language (both sides)."""
    names = []
    for lang in languages:
        if (code := native(lang, TATOEBA_CODES)) is not None:
            names.append(f"tatoeba/{code}")
        if (code := native(lang, FLORES_CODES)) is not None:
            names += [f"flores200/{code}/dev", f"flores200/{code}/devtest"]
    names += [f"stsb_multi_mt/{x}/{s}" for x in STSB_LANGUAGES for s in ("dev", "test")]
    texts: set[str] = set()
    for name in names:
        texts.update(normalise(t) for t in catalog.texts(name))
    return texts, names


class EmbeddingKDDataModule(MultilingualDataModule):
    """Training rows for embedding-level KD (`kd_rows`: pair rows whose `src_a`/`src_b` name the sentences the
    teacher bi-encoder embeds, scores NaN), after the teacher-scored stsb_multi_mt pairs of `pivot_languages`
    when set, so pair-score KD and embedding KD train in one run; validation and test as
    `MultilingualDataModule`. Subclasses say where the rows come from (`ParallelDataModule`,
    `distill.pool.SentencePoolDataModule`) and take `pivot_languages` as an argument."""

    what = "training data"  # named in the truncation warning

    def kd_rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def rows(self, split: str, texts: bool = False) -> Dataset:
        if split != "train":
            return super().rows(split, texts)
        hp = self.hparams
        table = Dataset.from_list(self.kd_rows())
        if hp.pivot_languages:
            pivots = pivot_pairs(hp.pivot_languages, "train", hp.mix_ratio, hp.max_source_pairs, hp.seed)
            table = concatenate_datasets([pivots, table.cast(pivots.features)])
        if hp.max_pairs is not None:
            table = table.select(range(min(hp.max_pairs, len(table))))
        self.label_ranges["train"] = (0.0, 5.0)
        return table

    def build(self, split: str) -> Dataset:
        if split != "train":
            return super().build(split)
        rows, spec = self._tokenised("train")
        warn_truncated(rows, spec["max_length"], f"{self.what} (train)")
        return self.with_teacher_vectors(with_pivot_scores(rows, self.hparams.cache_dir))


class ParallelDataModule(EmbeddingKDDataModule):
    """Alignment from parallel data, optionally mixed with teacher-scored pivot pairs (one run, one loader).

    Train rows: (English source, translation) pairs as pair rows — `text_a` the source, `text_b` the
    translation, `src_a` = `src_b` = the source — so `EmbeddingMSE` pulls both the source (source -> source
    teacher) and the translation (translation -> source teacher) onto the teacher's vector of the source; their
    gold and teacher score are unknown (NaN), which the score objectives leave out. With `pivot_languages`, the
    stsb_multi_mt pivot pairs of `MultilingualDataModule` join them with their cached teacher scores, so pair-score
    KD (`ScoreRegression`) and alignment train together. Every pair whose source or translation occurs in a test
    or validation set (Tatoeba, FLORES dev/devtest, stsb_multi_mt dev/test) is dropped; the counts are in
    `self.report` and printed. Validation and test: as `MultilingualDataModule` (STS per language and xx-en;
    FLORES and Tatoeba through `distill.evaluation.MultilingualEvaluation`).

    Args:
        parallel_languages: translation languages (ISO 639-1) read from `corpora`.
        corpora: catalog corpora to read them from: `tatoeba_challenge` (28 languages), `flores200_dev` (55;
            keep it out when FLORES dev selects models), `stsb_multi_mt_train` (10, STS-B train translated).
        parallel: further sources, each as `read_parallel` takes them (files, tables, catalog names, `hf:`).
        max_per_language: pairs per language after deduplication (seeded random subset; None: all).
        exclude_test_sentences: drop pairs that share a sentence with a test or validation set.
        pivot_languages: stsb_multi_mt languages of teacher-scored pivot pairs mixed in (None or []: none; then
            `cache_dir` may stay unset).
        (the rest): as `MultilingualDataModule` (`languages` sets the default validation languages).
    """

    def __init__(
        self,
        parallel_languages: list[str] | None = None,
        corpora: list[str] = ["tatoeba_challenge"],  # noqa: B006 - jsonargparse default
        parallel: list[str | dict[str, str]] | None = None,
        max_per_language: int | None = None,
        exclude_test_sentences: bool = True,
        pivot_languages: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # **kwargs: MultilingualDataModule's and PairDataModule's arguments (jsonargparse reads their signatures)
        check_parallel_languages(list(parallel_languages or []), list(corpora))
        if not parallel_languages and not parallel:
            raise DataError("data.init_args.parallel_languages and data.init_args.parallel are both empty; name the "
                            "languages of parallel text to align (or parallel files)")
        if max_per_language is not None and max_per_language < 1:
            raise DataError(f"data.init_args.max_per_language is {max_per_language}; expected >= 1 or null")
        super().__init__(**kwargs)
        self.report: dict[str, Any] = {}
        self._parallel: Dataset | None = None

    def parallel_rows(self) -> Dataset:
        """The deduplicated, test-filtered, capped parallel pairs (`source`, `translation`, `lang`)."""
        if self._parallel is None:  # read once: prepare_data, the teacher's vectors and setup all need them
            self._parallel = self._read_parallel()
        return self._parallel

    def _read_parallel(self) -> Dataset:
        hp = self.hparams
        parts = [r for lang in hp.parallel_languages or [] for corpus in hp.corpora
                 if (r := corpus_rows(corpus, lang)) is not None]
        parts += [read_parallel(s) for s in hp.parallel or []]
        rows = concatenate_datasets(parts)
        languages = sorted(set(column(rows, "lang")))
        banned, banned_sets = test_sentences(languages) if hp.exclude_test_sentences else (set(), [])
        seen: set[tuple[str, str]] = set()
        keep: dict[str, list[int]] = {}
        dropped_test = duplicates = 0
        for i, (s, t, lang) in enumerate(zip(*(column(rows, c) for c in ("source", "translation", "lang")))):
            key = (normalise(s), normalise(t))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if key[0] in banned or key[1] in banned:
                dropped_test += 1
                continue
            keep.setdefault(lang, []).append(i)
        rng = random.Random(hp.seed)
        chosen = []
        for lang in sorted(keep):
            ix = keep[lang]
            if hp.max_per_language and len(ix) > hp.max_per_language:
                ix = sorted(rng.sample(ix, hp.max_per_language))
            chosen += ix
        self.report = {"pairs": len(chosen), "read": len(rows), "duplicates": duplicates,
                       "dropped_test_overlap": dropped_test, "excluded_sets": len(banned_sets),
                       "per_language": {lang: min(len(ix), hp.max_per_language or len(ix)) for lang, ix in
                                        sorted(keep.items())}}
        print(f"parallel data: {len(chosen)} pairs in {len(keep)} languages ({dropped_test} dropped: a sentence "
              f"is in a test or validation set; {duplicates} duplicates)", flush=True)
        return rows.select(chosen)

    what = "parallel data"

    def kd_rows(self) -> list[dict[str, Any]]:
        parallel = self.parallel_rows()
        return [_pair_row(s, t, math.nan, PIVOT, lang, "", s, s) for s, t, lang in
                zip(*(column(parallel, c) for c in ("source", "translation", "lang")))]


def with_pivot_scores(rows: Dataset, cache_dir: str | list[str] | None) -> Dataset:
    """Training rows with a `score` column: the cached teacher score of each pivot row (a non-empty `pivot_id`),
    NaN for the rest (parallel or pool rows, which the score objectives leave out); the rows unchanged without a
    cache."""
    if not cache_dir:
        return rows
    pivot = np.flatnonzero(np.array([bool(p) for p in column(rows, "pivot_id")]))
    scores = np.full(len(rows), np.nan, np.float32)
    if pivot.size:
        caches = [ScoreCache(d) for d in ([cache_dir] if isinstance(cache_dir, str) else cache_dir)]
        scores[pivot] = np.asarray(join_caches(caches, rows.select(pivot))["score"], np.float32)
    return rows.add_column("score", scores)
