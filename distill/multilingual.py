"""Multilingual data: the bundled stsb_multi_mt and Tatoeba, language codes, cross-lingual pivot pairs.

stsb_multi_mt (Philip May, 2021) is STS Benchmark machine-translated into 10 languages; row i of every language is
the translation of row i of `en`, which equals STS-B. So a translated pair (a_de, b_de) or a mixed pair
(a_de, b_en) has a well-defined *pivot*: the English pair the teacher scored. Rows built here carry `lang_a`,
`lang_b` and `pivot_id` (the English pair's `pair_id`), and the score cache is joined on `pivot_id`
(DESIGN.md "Data contracts"), so one teacher pass over English pairs teaches every language.
"""

from __future__ import annotations

import importlib.resources
import random
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset

from distill.data import DataError, make_pair_id

#: stsb_multi_mt languages (ISO 639-1)
STSB_LANGUAGES = ("de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
PIVOT = "en"
SPLITS = ("train", "dev", "test")
LABEL_RANGE = (0.0, 5.0)

#: ISO 639-1 -> the Tatoeba (LASER) file code; Tatoeba codes (3 letters) are accepted as they are
TATOEBA_CODES = {
    "af": "afr", "am": "amh", "ar": "ara", "az": "aze", "be": "bel", "bg": "bul", "bn": "ben", "bs": "bos",
    "ca": "cat", "cs": "ces", "cy": "cym", "da": "dan", "de": "deu", "el": "ell", "eo": "epo", "es": "spa",
    "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "ga": "gle", "gl": "glg", "he": "heb",
    "hi": "hin", "hr": "hrv", "hu": "hun", "hy": "hye", "id": "ind", "is": "isl", "it": "ita", "ja": "jpn",
    "ka": "kat", "kk": "kaz", "km": "khm", "ko": "kor", "la": "lat", "lt": "lit", "lv": "lvs", "mk": "mkd",
    "ml": "mal", "mn": "mon", "mr": "mar", "nl": "nld", "nb": "nob", "pl": "pol", "pt": "por", "ro": "ron",
    "ru": "rus", "sk": "slk", "sl": "slv", "sq": "sqi", "sr": "srp", "sv": "swe", "sw": "swh", "ta": "tam",
    "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "uk": "ukr", "ur": "urd", "uz": "uzb", "vi": "vie",
    "zh": "cmn",
}


def bundled_root(name: str) -> Path:
    """Folder of a bundled dataset (`stsb_multi_mt`, `tatoeba`)."""
    return Path(str(importlib.resources.files("distill") / "bundled" / name))


def check_languages(languages: list[str] | tuple[str, ...], key: str, known: tuple[str, ...] = STSB_LANGUAGES) -> \
        list[str]:
    """Validate language codes; an unknown one is a one-line error naming the config key and the choices."""
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise DataError(f"{key}: unknown language code(s) {unknown}; stsb_multi_mt has {', '.join(known)}")
    return list(languages)


def read_stsb_mt(lang: str, split: str, root: Path | None = None) -> pd.DataFrame:
    """One language and split of stsb_multi_mt as columns `text_a, text_b, label` (0-5).

    Files are comma-separated with Excel quoting and no header (s1, s2, score).

    Raises:
        DataError: an unknown language or split, a missing file, or a file whose row count differs from the
            English one (the translations must stay row-aligned for pivots to mean anything).
    """
    check_languages([lang], "language")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    root = root or bundled_root("stsb_multi_mt")
    path = root / f"stsb-{lang}-{split}.csv"
    if not path.is_file():
        raise DataError(f"{path}: no such file; the stsb_multi_mt folder is incomplete")
    frame = pd.read_csv(path, header=None, names=["text_a", "text_b", "label"], dtype=str, keep_default_na=False,
                        encoding="utf-8")
    if lang != PIVOT:
        pivot = root / f"stsb-{PIVOT}-{split}.csv"
        n_pivot = len(pd.read_csv(pivot, header=None, dtype=str, keep_default_na=False, encoding="utf-8"))
        if len(frame) != n_pivot:
            raise DataError(f"{path}: {len(frame)} rows but {pivot.name} has {n_pivot}; translations must be "
                            f"row-aligned with the English file (re-export the translation or drop {lang!r})")
    empty = [i for i, (a, b) in enumerate(zip(frame.text_a, frame.text_b)) if not a.strip() or not b.strip()]
    if empty:
        raise DataError(f"{path}, row {empty[0] + 1}: empty text; fix the translation or drop {lang!r}")
    frame["label"] = frame["label"].astype(float)
    return frame


def texts(languages: list[str], split: str = "train") -> list[str]:
    """Every sentence (both sides, file order, duplicates kept) of stsb_multi_mt `split` for `languages`.

    The corpus `distill trim` keeps the vocabulary of: training data only, never test sets or Tatoeba.
    """
    out: list[str] = []
    for lang in check_languages(languages, "languages"):
        frame = read_stsb_mt(lang, split)
        out += frame.text_a.tolist() + frame.text_b.tolist()
    return out


def tatoeba_code(lang: str) -> str:
    """ISO 639-1 (`de`) or Tatoeba code (`deu`) -> the Tatoeba file code; unknown codes are an error."""
    code = TATOEBA_CODES.get(lang, lang)
    if not (bundled_root("tatoeba") / f"tatoeba.{code}-eng.{code}").is_file():
        known = sorted(p.name.split(".")[1].split("-")[0] for p in bundled_root("tatoeba").glob("tatoeba.*-eng.eng"))
        raise DataError(f"tatoeba: unknown language code {lang!r}; use an ISO 639-1 code ({', '.join(TATOEBA_CODES)})"
                        f" or one of the {len(known)} Tatoeba codes ({', '.join(known[:8])}, ...)")
    return code


def read_tatoeba(lang: str) -> tuple[list[str], list[str]]:
    """(sentences in `lang`, their English translations), line-aligned (the LASER test set, ≤ 1000 lines)."""
    code = tatoeba_code(lang)
    root = bundled_root("tatoeba")
    xx = (root / f"tatoeba.{code}-eng.{code}").read_text(encoding="utf-8").splitlines()
    en = (root / f"tatoeba.{code}-eng.eng").read_text(encoding="utf-8").splitlines()
    if len(xx) != len(en):
        raise DataError(f"tatoeba.{code}-eng: {len(xx)} {code} lines but {len(en)} English lines; the files must be "
                        f"line-aligned")
    return xx, en
