"""What `distill trim` reads and measures: the training corpus whose pieces are kept (never a test set), the
evaluation sets, and their token coverage before and after trimming.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from distill import catalog, multilingual
from distill.data import DataError, read_pairs, read_texts
from distill.trim_vocab import TrimError, pieces, raw_backend, unknown_id

UNKNOWN_WARN = 0.05  # warn when more than this share of an evaluation set's tokens is unknown after trimming
TEXT_SUFFIXES = ("", ".txt", ".text")  # one sentence per line; other suffixes are pair or text tables


def read_corpus(languages: list[str] | None, corpus: list[str] | None) -> tuple[list[str], list[str]]:
    """The training sentences whose pieces are kept, and a name for each source.

    Raises:
        TrimError: no source, a source without text, or a test set (catalog or data folder).
    """
    texts: list[str] = []
    sources: list[str] = []
    if languages:
        got = multilingual.texts(languages, "train")  # training split only: test sentences would flatter coverage
        if not got:
            raise TrimError(f"stsb_multi_mt train has no sentences for {languages}; check --languages")
        texts += got
        sources.append(f"stsb_multi_mt/train ({', '.join(languages)})")
    for source in corpus or []:
        got = _read_source(source)
        if not got:
            raise TrimError(f"{source}: no text; give a file with one sentence per line or a pair file")
        texts += got
        sources.append(source)
    if not texts:
        raise TrimError("no corpus: pass --languages '[en, de]' (stsb_multi_mt training sentences) and/or "
                        "--corpus '[file.txt]' (training text)")
    return texts, sources


def _is_test_set(source: str) -> bool:
    """A catalog test split, or a file of the data folder that holds one (test sentences would flatter coverage)."""
    name = source.split("/")
    if catalog.is_name(source):
        # tatoeba_challenge is a test set upstream but trains here (issue: alignment); the LASER Tatoeba tests
        return name[-1] in ("test", "devtest") or name[0] in ("tatoeba", "xquad")
    path = Path(source)
    root = catalog.data_root().resolve()
    return path.exists() and root in path.resolve().parents and (
        "test" in path.name or "tatoeba" in str(path) or "xquad" in str(path))


def _read_source(source: str) -> list[str]:
    path = Path(source)
    if _is_test_set(source):
        raise TrimError(f"{source} is a test set; trim keeps the vocabulary of training data only (test sentences "
                        f"would flatter the evaluation): use its train split")
    if catalog.is_name(source):  # a catalog set: pairs or parallel text, both sides
        try:
            return catalog.texts(source)
        except catalog.CatalogError as err:
            raise TrimError(str(err)) from None
    if not path.is_file() and not source.startswith("hf:"):
        raise TrimError(f"{source}: no such file; fix --corpus")
    if path.suffix.lower() in TEXT_SUFFIXES and not source.startswith("hf:"):
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        rows, _ = read_pairs(source, label_column=None)
        return list(rows["text_a"]) + list(rows["text_b"])
    except DataError as pair_error:
        try:
            return list(read_texts(source)["text_a"])
        except DataError:
            raise TrimError(f"{source}: neither a pair file (text_a, text_b) nor a text table (text): "
                            f"{pair_error}") from None


def evaluation_sets(languages: list[str]) -> dict[str, list[str]]:
    """Sentences whose coverage is reported: stsb_multi_mt test (both sides) and Tatoeba (xx and English sides)."""
    sets: dict[str, list[str]] = {}
    for lang in languages:
        if lang in multilingual.STSB_LANGUAGES:
            frame = multilingual.read_stsb_mt(lang, "test")
            sets[f"stsb_multi_mt/test/{lang}"] = frame.text_a.tolist() + frame.text_b.tolist()
        if lang != multilingual.PIVOT:  # Tatoeba pairs xx with English; an English set would be that side again
            try:
                xx, en = catalog.read_tatoeba(lang)
            except catalog.CatalogError:
                if lang in multilingual.STSB_LANGUAGES:
                    continue
                raise TrimError(f"eval_languages: {lang!r} is neither an stsb_multi_mt language "
                                f"({', '.join(multilingual.STSB_LANGUAGES)}) nor a Tatoeba one") from None
            sets[f"tatoeba/{lang}-en"] = xx + en
    return sets


def measure_coverage(spec: dict[str, Any], out: Path, new_id: dict[int, int],
                     sets: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per evaluation set: its tokens (original tokenizer, no special tokens) and the share that are known before
    and kept after trimming, the share of texts made only of kept pieces (their embeddings are unchanged), and,
    tokenised by the trimmed tokenizer, the share of unknown tokens and of texts that are nothing but unknown."""
    original = raw_backend(spec)
    trimmed_spec = json.loads((out / "tokenizer.json").read_text())
    trimmed = raw_backend(trimmed_spec)
    unk_before, unk_after = unknown_id(spec), unknown_id(trimmed_spec)
    # a bare word-boundary piece (Metaspace's "▁" before an unknown word) says nothing about the text
    blank = {i for i, t in pieces(trimmed_spec).items() if not t.replace("▁", "").strip()} | {unk_after}
    report: dict[str, dict[str, Any]] = {}
    for name, texts in sets.items():
        before = [e.ids for e in original.encode_batch(texts, add_special_tokens=False)]
        after = [e.ids for e in trimmed.encode_batch(texts, add_special_tokens=False)]
        n_before = sum(map(len, before)) or 1
        n_after = sum(map(len, after)) or 1
        unknown_after = sum(i == unk_after for ids in after for i in ids)
        report[name] = {
            "texts": len(texts), "tokens": n_before,
            "coverage_before": round(1 - sum(i == unk_before for ids in before for i in ids) / n_before, 4),
            "coverage_after": round(sum(i in new_id and i != unk_before for ids in before for i in ids) / n_before, 4),
            "covered_texts": round(sum(all(i in new_id for i in ids) for ids in before) / max(len(texts), 1), 4),
            "unknown_after": round(unknown_after / n_after, 4),
            "unknown_texts": round(sum(unk_after in ids and all(i in blank for i in ids) for ids in after)
                                   / max(len(texts), 1), 4),
        }
    return report


def warn_uncovered(coverage: dict[str, dict[str, Any]]) -> None:
    """One warning per evaluation set that the trimmed vocabulary leaves largely unknown."""
    for name, c in coverage.items():
        if c["unknown_texts"] > 0:
            warnings.warn(f"trim: {name}: {c['unknown_texts']:.1%} of its texts are entirely outside the trimmed "
                          f"vocabulary ({c['unknown_after']:.1%} of its tokens unknown); add its language to "
                          f"--languages or its training text to --corpus", stacklevel=3)
        elif c["unknown_after"] > UNKNOWN_WARN:
            warnings.warn(f"trim: {name}: {c['unknown_after']:.1%} of its tokens are unknown after trimming; add "
                          f"its language to --languages, more text to --corpus, or raise --top_n", stacklevel=3)
