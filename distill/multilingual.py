"""Multilingual training data: stsb_multi_mt from the data catalog, cross-lingual pivot pairs, their datamodule.

stsb_multi_mt (Philip May, 2021) is STS Benchmark machine-translated into 10 languages; row i of every language is
the translation of row i of `en`, which equals STS-B. So a translated pair (a_de, b_de) or a mixed pair
(a_de, b_en) has a well-defined *pivot*: the English pair the teacher scored. Rows built here carry `lang_a`,
`lang_b` and `pivot_id` (the English pair's `pair_id`), and the score cache is joined on `pivot_id`
(DESIGN.md "Data contracts"), so one teacher pass over English pairs teaches every language. Embedding-level
distillation adds a frozen teacher bi-encoder's embeddings of the English sentences (`teacher_embeddings`).
Tatoeba (evaluation only) is read by `distill.catalog.read_tatoeba`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset

from distill import catalog
from distill.data import DataError, PairDataModule, make_pair_id
from distill.languages import STSB_LANGUAGES

PIVOT = "en"
SPLITS = ("train", "dev", "test")
LABEL_RANGE = (0.0, 5.0)


def check_languages(languages: list[str] | tuple[str, ...], key: str, known: tuple[str, ...] = STSB_LANGUAGES) -> \
        list[str]:
    """Validate language codes; an unknown one is a one-line error naming the config key and the choices."""
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise DataError(f"{key}: unknown language code(s) {unknown}; stsb_multi_mt has {', '.join(known)}")
    return list(languages)


def read_stsb_mt(lang: str, split: str, root: Path | None = None) -> pd.DataFrame:
    """One language and split of stsb_multi_mt (catalog `stsb_multi_mt/<lang>/<split>`) as columns
    `text_a, text_b, label` (0-5); `root`: a data folder to read instead of the catalog's (same layout).

    Raises:
        DataError: an unknown language or split, a missing file, or a file whose row count differs from the
            English one (the translations must stay row-aligned for pivots to mean anything).
    """
    check_languages([lang], "language")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    frame = _stsb_mt_frame(lang, split, root)
    if lang != PIVOT:
        n_pivot = len(_stsb_mt_frame(PIVOT, split, root))
        if len(frame) != n_pivot:
            raise DataError(f"stsb_multi_mt/{lang}/{split}: {len(frame)} rows but stsb_multi_mt/{PIVOT}/{split} has "
                            f"{n_pivot}; translations must be row-aligned with the English file (re-export the "
                            f"translation or drop {lang!r})")
    empty = [i for i, (a, b) in enumerate(zip(frame.text_a, frame.text_b)) if not a.strip() or not b.strip()]
    if empty:
        raise DataError(f"stsb_multi_mt/{lang}/{split}, row {empty[0] + 1}: empty text; fix the translation or drop "
                        f"{lang!r}")
    return frame


def _stsb_mt_frame(lang: str, split: str, root: Path | None) -> pd.DataFrame:
    name = f"stsb_multi_mt/{lang}/{split}"
    try:
        return (catalog.read_local(name, root) if root is not None else catalog.load(name)).rows.to_pandas()
    except catalog.CatalogError as err:
        raise DataError(str(err)) from None


def texts(languages: list[str], split: str = "train") -> list[str]:
    """Every sentence (both sides, file order, duplicates kept) of stsb_multi_mt `split` for `languages`.

    The corpus `distill trim` keeps the vocabulary of: training data only, never test sets or Tatoeba.
    """
    out: list[str] = []
    for lang in check_languages(languages, "languages"):
        frame = read_stsb_mt(lang, split)
        out += frame.text_a.tolist() + frame.text_b.tolist()
    return out


def _pair_row(text_a: str, text_b: str, label: float, lang_a: str, lang_b: str, pivot_id: str, src_a: str,
              src_b: str, eval_set: str | None = None) -> dict[str, Any]:
    row = {"pair_id": make_pair_id(text_a, text_b), "text_a": text_a, "text_b": text_b, "label": label,
           "gold": (label - LABEL_RANGE[0]) / (LABEL_RANGE[1] - LABEL_RANGE[0]), "lang_a": lang_a, "lang_b": lang_b,
           "pivot_id": pivot_id, "src_a": src_a, "src_b": src_b}
    if eval_set is not None:
        row["eval_set"] = eval_set
    return row


def pivot_pairs(languages: list[str], split: str = "train", mix_ratio: float = 0.5, max_source_pairs: int | None = None,
                seed: int = 0) -> Dataset:
    """Training pairs in `languages`, each pointing at the English pair the teacher scored (`pivot_id`).

    For every English source pair i (the first `max_source_pairs`, in a seeded random order) and language xx:
    the translated pair (a_xx, b_xx) — for `en`, the English pair itself — and, with probability `mix_ratio`, a
    mixed pair with one side in English ((a_xx, b_en) or (a_en, b_xx), chosen at random), so the student also
    learns to compare across languages. `src_a`/`src_b` are the English source sentences (the targets of
    embedding-level distillation); `label`/`gold` are the English pair's gold score.

    Raises:
        DataError: an unknown language code, a mix ratio outside [0, 1], or misaligned translations.
    """
    check_languages(languages, "data.init_args.languages")
    if not languages:
        raise DataError("data.init_args.languages is empty; name at least one stsb_multi_mt language")
    if not 0.0 <= mix_ratio <= 1.0:
        raise DataError(f"data.init_args.mix_ratio is {mix_ratio}; expected a share in [0, 1]")
    en = read_stsb_mt(PIVOT, split)
    frames = {lang: en if lang == PIVOT else read_stsb_mt(lang, split) for lang in languages}
    rng = random.Random(seed)
    order = list(range(len(en)))
    rng.shuffle(order)
    order = sorted(order[:max_source_pairs] if max_source_pairs else order)
    rows: list[dict[str, Any]] = []
    for i in order:
        a_en, b_en, label = en.text_a[i], en.text_b[i], float(en.label[i])
        pivot = make_pair_id(a_en, b_en)
        for lang in languages:
            a, b = frames[lang].text_a[i], frames[lang].text_b[i]
            rows.append(_pair_row(a, b, label, lang, lang, pivot, a_en, b_en))
            if lang != PIVOT and rng.random() < mix_ratio:
                if rng.random() < 0.5:
                    rows.append(_pair_row(a, b_en, label, lang, PIVOT, pivot, a_en, b_en))
                else:
                    rows.append(_pair_row(a_en, b, label, PIVOT, lang, pivot, a_en, b_en))
    return Dataset.from_list(rows)


def eval_pairs(languages: list[str], cross: list[str], split: str, max_pairs: int | None = None,
               seed: int = 0) -> Dataset:
    """Evaluation pairs, one named set per language (`de`: s1 and s2 in German) and per cross-lingual pair
    (`de-en`: s1 in German, s2 in English; DESIGN.md's key pattern), in column `eval_set`.

    `max_pairs` keeps the same seeded random subset of source rows in every set (validation only: test sets are
    always whole).
    """
    check_languages(languages, f"data.init_args.{'val' if split == 'dev' else split}_languages")
    pairs = []
    for code in cross:
        first, _, second = code.partition("-")
        if not second:
            raise DataError(f"cross-lingual set {code!r} is not of the form xx-yy (e.g. de-en)")
        check_languages([first, second], f"cross-lingual set {code!r}")
        pairs.append((first, second))
    en = read_stsb_mt(PIVOT, split)
    order = list(range(len(en)))
    if max_pairs and max_pairs < len(order):
        rng = random.Random(seed)
        order = sorted(rng.sample(order, max_pairs))
    frames = {lang: read_stsb_mt(lang, split) for lang in {*languages, *(x for p in pairs for x in p)}}
    rows = []
    for name, (la, lb) in [*((lang, (lang, lang)) for lang in languages), *((f"{a}-{b}", (a, b)) for a, b in pairs)]:
        for i in order:
            pivot = make_pair_id(en.text_a[i], en.text_b[i])
            rows.append(_pair_row(frames[la].text_a[i], frames[lb].text_b[i], float(en.label[i]), la, lb, pivot,
                                  en.text_a[i], en.text_b[i], eval_set=name))
    return Dataset.from_list(rows)


class MultilingualDataModule(PairDataModule):
    """Cross-lingual pair-score distillation data from stsb_multi_mt (DESIGN.md: `lang_a`, `lang_b`, `pivot_id`).

    Train: translated and mixed-language pairs in `languages` (`pivot_pairs`), whose teacher score is the
    English pivot pair's score from `cache_dir` (one `distill cache` run over STS-B train serves every language).
    With `teacher_embeddings`, each row also carries the frozen teacher bi-encoder's embeddings of the English
    source sentences (`t_a`, `t_b`) for embedding-level distillation (`distill.losses.EmbeddingMSE`).
    Validation: dev pairs per language and per `xx-en`, logged per set (`val/spearman_cosine/de`) and averaged
    for checkpoint selection. Test: every `test_languages` and `test_cross` set, whole.

    Args:
        languages: training languages (ISO 639-1, stsb_multi_mt: de en es fr it ja nl pl pt ru zh).
        mix_ratio: probability of adding a mixed-language pair beside each translated pair.
        max_source_pairs: use this many English source pairs (seeded random subset; every language gets the
            translations of the same ones).
        val_languages: dev sets (default: the training languages).
        val_cross: dev cross-lingual sets (default: `xx-en` for each non-English validation language).
        max_val_pairs: dev pairs per set (seeded subset, same rows in every set).
        test_languages: test sets (default: all 11).
        test_cross: test cross-lingual sets (default: `xx-en` for the 10 non-English languages).
        max_test_pairs: test pairs per set (smoke runs only; reported figures use whole test sets).
        teacher_embeddings: a frozen bi-encoder for embedding-level KD: a student checkpoint or folder, or a
            backbone (e.g. `multilingual-e5-small` with `teacher_embeddings_prefix: "query: "`).
        teacher_embeddings_prefix: input prefix for a backbone given as `teacher_embeddings`.
        teacher_embeddings_dir: where the teacher's vectors are cached (`distill.embedding_cache`: manifest,
            shards, resumable; one made by another teacher or for other sentences is refused); default: a
            folder under `DISTILL_HOME/embeddings` named by the teacher and the sentences.
        (the rest): as `PairDataModule` (its train, val, test and label_range are fixed here); `cache_dir` is the
            teacher's score cache over the English pivot pairs (STS-B train).
    """

    def __init__(
        self,
        languages: list[str] = ["en", "de", "es", "fr", "it", "nl", "pl", "pt"],  # noqa: B006 - jsonargparse default
        mix_ratio: float = 0.5,
        max_source_pairs: int | None = None,
        val_languages: list[str] | None = None,
        val_cross: list[str] | None = None,
        max_val_pairs: int | None = 500,
        test_languages: list[str] | None = None,
        test_cross: list[str] | None = None,
        max_test_pairs: int | None = None,
        teacher_embeddings: str | None = None,
        teacher_embeddings_prefix: str = "",
        teacher_embeddings_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        # **kwargs: PairDataModule's other arguments, which jsonargparse reads from its signature (cache_dir, ...)
        check_languages(languages, "data.init_args.languages")
        super().__init__(train="stsb_multi_mt/train", val="stsb_multi_mt/dev", test="stsb_multi_mt/test",
                         label_range=LABEL_RANGE, **kwargs)
        val_languages = check_languages(val_languages or languages, "data.init_args.val_languages")
        test_languages = check_languages(test_languages or list(STSB_LANGUAGES), "data.init_args.test_languages")
        self.eval_specs = {
            "val": (val_languages, val_cross if val_cross is not None else
                    [f"{x}-{PIVOT}" for x in val_languages if x != PIVOT]),
            "test": (test_languages, test_cross if test_cross is not None else
                     [f"{x}-{PIVOT}" for x in STSB_LANGUAGES if x != PIVOT]),
        }
        for split, (_, cross) in self.eval_specs.items():
            for code in cross:
                check_languages(code.split("-"), f"data.init_args.{split}_cross ({code!r})")

    def eval_sets(self, split: str) -> list[str]:
        """Names of the evaluation sets of `val` or `test` (languages, then `xx-en`), as logged."""
        languages, cross = self.eval_specs[split]
        return [*languages, *cross]

    def rows(self, split: str, texts: bool = False) -> Dataset:
        hp = self.hparams
        if split == "predict":
            return super().rows(split, texts)
        self.label_ranges[split] = LABEL_RANGE
        if split == "train":
            rows = pivot_pairs(hp.languages, "train", hp.mix_ratio, hp.max_source_pairs, hp.seed)
        else:
            languages, cross = self.eval_specs[split]
            rows = eval_pairs(languages, cross, "dev" if split == "val" else "test",
                              hp.max_val_pairs if split == "val" else hp.max_test_pairs, hp.seed)
        if hp.max_pairs is not None:
            rows = rows.select(range(min(hp.max_pairs, len(rows))))
        return rows

    def _teacher_vectors(self, rows: Dataset) -> dict[str, Any]:
        from distill.embedding_cache import teacher_vectors

        hp = self.hparams
        return teacher_vectors(hp.teacher_embeddings, list(rows["src_a"]) + list(rows["src_b"]),
                               hp.teacher_embeddings_prefix, hp.teacher_embeddings_dir, hp.eval_batch_size)

    def prepare_data(self) -> None:
        super().prepare_data()
        # rank 0 computes; setup on every rank reads the cache
        if self.hparams.teacher_embeddings and self._stage() == "fit":
            self._teacher_vectors(self.rows("train"))

    def with_teacher_vectors(self, rows: Dataset) -> Dataset:
        """Training rows with the teacher's vectors of their English sources (`t_a`, `t_b`), when configured."""
        if not self.hparams.teacher_embeddings:
            return rows
        vectors = self._teacher_vectors(rows)
        self._check_width(len(next(iter(vectors.values()))))
        rows = rows.add_column("t_a", [vectors[t] for t in rows["src_a"]])
        return rows.add_column("t_b", [vectors[t] for t in rows["src_b"]])

    def _check_width(self, width: int) -> None:
        # the student's width, where a trainer's model says it: a mismatch fails here, before any step
        model = self.trainer.lightning_module if self.trainer is not None else None
        encoder = getattr(getattr(model, "student", None), "encoder", None)
        size = getattr(getattr(encoder, "config", None), "hidden_size", None)
        if size is not None and size != width:
            raise DataError(f"data.init_args.teacher_embeddings={self.hparams.teacher_embeddings!r} gives "
                            f"{width}-d vectors but the student's are {size}-d; EmbeddingMSE needs one width: use a "
                            f"teacher bi-encoder of the student's width")

    def build(self, split: str) -> Dataset:
        rows = super().build(split)
        return self.with_teacher_vectors(rows) if split == "train" else rows
