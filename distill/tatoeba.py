"""Tatoeba bitext retrieval data (the LASER test set): language codes and the line-aligned sentence lists.

`distill test`'s `MultilingualEvaluation`, `distill bench` and `distill trim` read it; it knows nothing of training
data or datamodules.
"""

from __future__ import annotations

import difflib

from distill import catalog
from distill.data import DataError
from distill.languages import TATOEBA_CODES as TATOEBA_TEST_CODES
from distill.languages import iso

#: ISO 639-1 -> the Tatoeba (LASER) file code, from the one language table; Tatoeba codes are accepted as they are
TATOEBA_CODES = {iso(code): code for code in reversed(TATOEBA_TEST_CODES) if iso(code) != code}


def tatoeba_code(lang: str) -> str:
    """ISO 639-1 (`de`) or Tatoeba code (`deu`) -> the Tatoeba file code; unknown codes are an error."""
    code = TATOEBA_CODES.get(lang, lang)
    if code not in TATOEBA_TEST_CODES:
        close = difflib.get_close_matches(lang, [*TATOEBA_CODES, *TATOEBA_TEST_CODES], n=4, cutoff=0.5)
        raise DataError(f"tatoeba: unknown language code {lang!r}"
                        f"{'; close matches: ' + ', '.join(close) if close else ''}; use an ISO 639-1 code "
                        f"({', '.join(TATOEBA_CODES)}) or one of the {len(TATOEBA_TEST_CODES)} Tatoeba codes "
                        f"({', '.join(TATOEBA_TEST_CODES[:8])}, ...)")
    return code


def read_tatoeba(lang: str) -> tuple[list[str], list[str]]:
    """(sentences in `lang`, their English translations), line-aligned (catalog `tatoeba/<code>`, the LASER test
    set, ≤ 1000 lines)."""
    try:
        rows = catalog.load(f"tatoeba/{tatoeba_code(lang)}").rows
    except catalog.CatalogError as err:
        raise DataError(str(err)) from None
    return list(rows["translation"]), list(rows["source"])
