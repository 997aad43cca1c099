"""Reading and validating pair and text files (DESIGN.md "Data contracts", "Where data comes from").

A pair row is `pair_id, text_a, text_b[, label]`; gold labels are declared on a `label_range` and mapped to [0, 1]
as `gold`. A source is a catalog name (`stsb/train`), a file (csv/tsv/jsonl/parquet) or `hf:<id>[:<config>]:<split>`.
Every refusal is a `DataError` naming the file, the row or column, and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset, concatenate_datasets

from distill import catalog
from distill.cache_keys import make_pair_id, normalise

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad input data: the message names the file, the row or column, and the fix."""



def read_table(path: Path, file_format: str | None) -> pd.DataFrame:
    """A .csv/.tsv/.jsonl/.parquet file as a DataFrame (format from the suffix unless given); a missing or unreadable
    file, or duplicate column names, is a one-line DataError."""
    fmt = file_format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use {', '.join(FORMATS)} or set the format")
    if not path.is_file():
        raise DataError(f"{path}: no such file; fix the data path in the config")
    try:
        if fmt != "parquet":  # text formats: name the line of a bad byte, which pandas would not
            path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: invalid UTF-8 (byte {err.object[err.start]:#x}); re-encode the file "
                        f"as UTF-8 or fix that row") from None
    try:
        if fmt == "jsonl":
            frame = _read_jsonl(path)
        elif fmt in ("csv", "tsv"):
            header = next(csv.reader([path.open(encoding="utf-8").readline()], delimiter="\t" if fmt == "tsv" else ","),
                          [])
            _no_duplicate_columns(header, path)
            # TSV: tabs separate, quotes are text (a text starting with `"` keeps it; an unbalanced one cannot merge
            # rows); CSV keeps its quoting rules
            frame = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                                encoding="utf-8", quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
        else:
            frame = pd.read_parquet(path)
    except (UnicodeDecodeError, ValueError, OSError) as err:
        if isinstance(err, DataError):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot be read as {fmt} ({first}); check the file or its format") from err
    _no_duplicate_columns(list(frame.columns), path)
    return frame


def _no_duplicate_columns(columns: list[Any], path: Path) -> None:
    seen = {str(c) for c in columns}
    if len(seen) != len(columns):
        twice = next(str(c) for i, c in enumerate(columns) if str(c) in map(str, columns[:i]))
        raise DataError(f"{path}: column {twice!r} appears twice; rename one (otherwise the first would silently win)")


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON Lines with the line number of a broken line and of a repeated key in one object."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=lambda pairs, n=number: _unique_keys(pairs, path, n))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno}); fix or drop that "
                            f"line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: a JSON {type(row).__name__}, expected an object per line")
        rows.append(row)
    return pd.DataFrame(rows)


def _unique_keys(pairs: list[tuple[str, Any]], path: Path, number: int) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise DataError(f"{path}, line {number}: key {twice!r} appears twice in one object; keep one")
    return dict(pairs)


def is_blank(text: str) -> bool:
    """Empty once whitespace and invisible format characters (zero-width space/joiners, BOM) are removed."""
    return not "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) != "Cf")


def read_pairs(
    source: str,
    text_a_column: str = "text_a",
    text_b_column: str = "text_b",
    label_column: str | None = "label",
    id_column: str | None = None,
    label_range: tuple[float, float] | None = None,
    keep_columns: tuple[str, ...] = (),
) -> tuple[Dataset, tuple[float, float] | None]:
    """Read and validate pairs: a catalog name (`stsb/train`, `stsb_multi_mt/de/dev`), a file, or
    `hf:<hub id>[:<config>]:<split>` (DESIGN.md "Where data comes from").

    Returns the rows as a `Dataset` (`pair_id, text_a, text_b[, label, gold]`, plus `keep_columns` as strings,
    e.g. the `group` of grouped data) and the label range.

    Raises:
        DataError: a missing column, an empty text, a non-numeric or out-of-range label, or a duplicate
            `pair_id` with different texts; the message names the file, the row (1-based) and the fix.
    """
    if catalog.is_name(source):
        entry = _catalog_entry(source, "pairs")
        path = Path(source)  # errors name the set (`stsb/train, row 5: ...`)
        frame = entry.rows.to_pandas()
        columns = {"text_a": "text_a", "text_b": "text_b", "label": "label"}
        label_range = label_range or entry.label_range
    else:
        path = Path(source)
        frame = _read_source_table(source)
        columns = {"text_a": text_a_column, "text_b": text_b_column}
        if label_column and (label_column in frame.columns or label_column != "label"):
            columns["label"] = label_column  # a named label column must exist; the default may be absent
        if id_column:
            columns["pair_id"] = id_column
    missing = [c for c in [*columns.values(), *keep_columns] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}. "
            f"Set data.init_args.text_a_column / text_b_column / label_column / id_column to match"
        )
    if label_range is not None and not label_range[0] < label_range[1]:
        raise DataError(f"label_range {list(label_range)} is empty or reversed; set data.init_args.label_range to "
                        f"[low, high] with low < high")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows; point the config at a non-empty file")
    out: dict[str, list[Any]] = {key: _texts(frame[columns[key]].tolist(), path, columns[key])
                                 for key in ("text_a", "text_b")}
    if "label" in columns:
        out["label"] = _labels(frame[columns["label"]].tolist(), path, columns["label"], label_range)
    ids = ([str(x) for x in frame[columns["pair_id"]]] if "pair_id" in columns
           else [make_pair_id(a, b) for a, b in zip(out["text_a"], out["text_b"])])
    _check_ids(ids, out["text_a"], out["text_b"], path)
    rows = {"pair_id": ids, **out, **{c: [str(x) for x in frame[c]] for c in keep_columns}}
    if "label" in out:
        lo, hi = label_range  # type: ignore[misc]
        rows["gold"] = [(x - lo) / (hi - lo) for x in out["label"]]
    return Dataset.from_dict(rows), label_range


def _catalog_entry(name: str, kind: str) -> catalog.Entry:
    try:
        entry = catalog.load(name)
    except catalog.CatalogError as err:
        raise DataError(str(err)) from None
    if entry.kind != kind:
        raise DataError(f"{name} is a {entry.kind} set, not {kind}; give a {kind} set or file here")
    return entry


def _read_source_table(source: str) -> pd.DataFrame:
    """A file or an `hf:` Hub set as a table of strings/values (columns as the source names them)."""
    if source.startswith("hf:"):
        try:
            return catalog.load_hf(source).to_pandas()
        except catalog.CatalogError as err:
            raise DataError(str(err)) from None
    return read_table(Path(source), None)


def _texts(values: list[Any], path: Path, column: str) -> list[str]:
    for i, t in enumerate(values):
        if not isinstance(t, str) or is_blank(t):
            what = ("empty" if not t.strip() else "invisible-only") if isinstance(t, str) else \
                "empty" if t is None else f"non-text ({type(t).__name__})"
            raise DataError(f"{path}, row {i + 1}: {what} {column!r} text; remove the row or fill it")
    return values


def _labels(values: list[Any], path: Path, column: str, label_range: tuple[float, float] | None) -> list[float]:
    if label_range is None:
        raise DataError(f"{path}: labels in {column!r} need a declared range; set data.init_args.label_range, "
                        f"e.g. [0, 5]")
    lo, hi = label_range
    labels = []
    for i, v in enumerate(values):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{path}, row {i + 1}: label {v!r} in {column!r} is not a number; fix or drop the row") \
                from None
        if not math.isfinite(x):
            raise DataError(f"{path}, row {i + 1}: label {v!r} in {column!r} is not finite; fix or drop the row")
        if not lo <= x <= hi:
            raise DataError(f"{path}, row {i + 1}: label {x} in {column!r} is outside label_range [{lo}, {hi}]; "
                            f"fix the row or data.init_args.label_range")
        labels.append(x)
    return labels


def _check_ids(ids: list[str], text_a: list[str], text_b: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, pid in enumerate(ids):
        j = seen.setdefault(pid, i)
        if j != i and (normalise(text_a[i]), normalise(text_b[i])) != (normalise(text_a[j]), normalise(text_b[j])):
            raise DataError(f"{path}, row {i + 1}: pair_id {pid!r} already names row {j + 1} with different texts; "
                            f"make the ids unique or drop id_column to hash the texts")


def read_texts(source: str, text_column: str = "text", id_column: str | None = None) -> Dataset:
    """Read single texts for a student's `predict` (`text` column and optional `id`, unless others are named)."""
    path = Path(source)
    frame = _read_source_table(source)
    if text_column not in frame.columns and "text" in frame.columns:
        text_column = "text"
    if text_column not in frame.columns:
        raise DataError(f"{path}: missing column {text_column!r}; the file has {list(frame.columns)}. "
                        f"Set data.init_args.text_a_column")
    texts = frame[text_column].tolist()
    for i, t in enumerate(texts):
        if not isinstance(t, str) or is_blank(t):
            raise DataError(f"{path}, row {i + 1}: empty text; remove the row or fill it")
    id_column = id_column or ("id" if "id" in frame.columns else None)
    ids = ([str(x) for x in frame[id_column]] if id_column and id_column in frame.columns
           else [hashlib.sha256(normalise(t).encode()).hexdigest()[:20] for t in texts])
    return Dataset.from_dict({"pair_id": ids, "text_a": texts})



def concat_pairs(parts: list[Dataset], sources: Any) -> Dataset:
    """Rows of several pair sources as one; a source without labels gets `label` and `gold` NaN (unknown)."""
    if len(parts) == 1:
        return parts[0]
    labelled = any("gold" in p.column_names for p in parts)
    filled = []
    for part in parts:
        if labelled and "gold" not in part.column_names:
            nan = [float("nan")] * len(part)
            part = part.add_column("label", nan).add_column("gold", nan)
        filled.append(part)
    columns = [set(p.column_names) for p in filled]
    if any(c != columns[0] for c in columns):
        raise DataError(f"data sources {sources} have different columns {[sorted(c) for c in columns]}; give every "
                        f"source the same columns (or train on them apart)")
    return concatenate_datasets([p.select_columns(filled[0].column_names) for p in filled])
