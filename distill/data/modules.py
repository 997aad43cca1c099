"""Pair data: reading and validating pair files, stable `pair_id`s, tokenisation and the pair datamodule.

A pair row is `pair_id, text_a, text_b[, label]` (DESIGN.md "Data contracts"). Gold labels are declared
on a `label_range` and mapped to [0, 1] as `gold`; teacher scores come from the score cache as `score`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import unicodedata
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from datasets import Dataset, concatenate_datasets
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from transformers import AutoTokenizer

from distill import catalog
from distill.backbones import cache_root
from distill.checkpoints import tokenizer_hash
from distill.resume import ResumableLoader

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad input data: the message names the file, the row or column, and the fix."""


def normalise(text: str) -> str:
    """The text form that `pair_id` hashes: NFC, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def make_pair_id(text_a: str, text_b: str) -> str:
    """Order-sensitive id of a pair: score(a, b) != score(b, a) for a cross-encoder."""
    joined = normalise(text_a) + "\x1f" + normalise(text_b)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:20]


def _read_table(path: Path, file_format: str | None) -> pd.DataFrame:
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
    out: dict[str, list[Any]] = {}
    for key in ("text_a", "text_b"):
        texts = frame[columns[key]].tolist()
        for i, t in enumerate(texts):
            if not isinstance(t, str) or is_blank(t):
                what = ("empty" if not t.strip() else "invisible-only") if isinstance(t, str) else \
                    "empty" if t is None else f"non-text ({type(t).__name__})"
                raise DataError(f"{path}, row {i + 1}: {what} {columns[key]!r} text; remove the row or fill it")
        out[key] = texts
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
    return _read_table(Path(source), None)


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


def fingerprint(rows: Dataset) -> str:
    """Content hash of pair rows (ids, texts and labels where present): names the data in the score cache,
    so edited texts under kept user ids still count as other data. Streamed in batches (10^7 rows fit)."""
    h = hashlib.sha256()
    columns = [c for c in ("pair_id", "text_a", "text_b", "label") if c in rows.column_names]
    for batch in rows.select_columns(columns).iter(batch_size=65536):
        for row in zip(*(batch[c] for c in columns)):
            h.update("\x1f".join(map(str, row)).encode("utf-8") + b"\n")
    return h.hexdigest()


def _column_hash(rows: Dataset, column: str) -> str:
    """Content hash of one column, streamed (numbers hashed as their float64 bytes)."""
    h = hashlib.sha256()
    for batch in rows.select_columns([column]).iter(batch_size=65536):
        values = batch[column]
        try:
            h.update(np.asarray(values, dtype=np.float64).tobytes())
        except (TypeError, ValueError):
            h.update(json.dumps(values, default=str).encode())
    return h.hexdigest()


@lru_cache(maxsize=8)
def load_tokenizer(path: str):  # noqa: ANN201 - transformers' tokenizer classes
    return AutoTokenizer.from_pretrained(path)


def tokenizer_fingerprint(path: str) -> str:
    """Hash of what a tokenizer does (vocabulary, normaliser, model), not of where it lives."""
    return tokenizer_hash(load_tokenizer(path))


def tokenised_cache_file(rows: Dataset, spec: dict[str, Any], split: str) -> Path:
    """Where the tokenised rows live on disk: named by the data, the tokenizer and the tokenisation options."""
    options = {k: v for k, v in spec.items() if k != "tokenizer"}
    # columns beyond the pair contract (e.g. a group) are stored in the file too: their values name it as well
    extra = sorted(set(rows.column_names) - {"pair_id", "text_a", "text_b", "label", "gold"})
    if extra:
        options["extra"] = hashlib.sha256(json.dumps([list(rows[c]) for c in extra]).encode()).hexdigest()
    if "gold" in rows.column_names:  # gold depends on label_range, which the label fingerprint cannot see
        options["gold"] = _column_hash(rows, "gold")
    key = hashlib.sha256(f"{fingerprint(rows)}|{tokenizer_fingerprint(spec['tokenizer'])}|"
                         f"{json.dumps(options, sort_keys=True)}".encode()).hexdigest()[:24]
    return cache_root() / "tokenized" / f"{split}-{key}.arrow"


def _drop_if_unreadable(cache_file: Path, n_rows: int) -> None:
    """A tokenised-row cache file cut short (a kill mid-write, a full disk) is re-made, with a warning naming it,
    instead of breaking every later run on the same data with an Arrow traceback."""
    if not cache_file.is_file():
        return
    try:
        ok = Dataset.from_file(str(cache_file)).num_rows == n_rows
    except Exception:  # noqa: BLE001 - Arrow raises several types for a truncated file
        ok = False
    if not ok:
        warnings.warn(f"{cache_file}: unreadable or incomplete tokenised-row cache; tokenising again", stacklevel=3)
        cache_file.unlink()


def tokenize(batch: dict[str, list], tokenizer: str, max_length: int, joint: bool, prefix: str = "") -> dict:
    """Tokenise pairs jointly (cross-encoder) or each side apart (bi-encoder), unpadded.

    Module-level with plain `fn_kwargs` so `Dataset.map` fingerprints it stably.
    """
    tok = load_tokenizer(tokenizer)
    if joint:
        enc = tok([prefix + t for t in batch["text_a"]], [prefix + t for t in batch["text_b"]], truncation=True,
                  max_length=max_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    out = {}
    for side in ("a", "b"):
        if f"text_{side}" not in batch:
            continue
        enc = tok([prefix + t for t in batch[f"text_{side}"]], truncation=True, max_length=max_length)
        out[f"{side}_input_ids"] = enc["input_ids"]
        out[f"{side}_attention_mask"] = enc["attention_mask"]
    return out


def _warn_truncated(rows: Dataset, max_length: int, name: str) -> None:
    """One warning that counts the rows cut at max_length (long texts are not an error)."""
    columns = [c for c in ("input_ids", "a_input_ids", "b_input_ids") if c in rows.column_names]
    if not columns:
        return
    cut = int((np.stack([token_lengths(rows, c) for c in columns]).max(axis=0) >= max_length).sum())
    if cut:
        warnings.warn(f"{name}: {cut} of {len(rows)} rows reach max_length={max_length} tokens and were truncated; "
                      f"raise the model's max_length (max_seq_length for students) to keep them whole", stacklevel=2)


def token_lengths(rows: Dataset, column: str) -> np.ndarray:
    """Length of every token list in `column`, read from Arrow (no per-row Python lists: 10^7 rows fit)."""
    import pyarrow.compute as pc

    return pc.list_value_length(rows.data.column(column)).to_numpy(zero_copy_only=False)


class PairCollator:
    """Pads each batch to its own longest sequence (never to max_length).

    Both sides of a bi-encoder pair share one width, so the student encodes them in one forward pass.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        batch: dict[str, Any] = {"pair_id": [r["pair_id"] for r in rows]}
        sequences = [k for k in rows[0] if k.endswith(("input_ids", "attention_mask", "token_type_ids"))]
        width = max(len(r[k]) for r in rows for k in sequences) if sequences else 0
        for key in sequences:
            pad = self.pad_token_id if key.endswith("input_ids") else 0
            batch[key] = torch.tensor([r[key] + [pad] * (width - len(r[key])) for r in rows])
        for key in ("gold", "score", "label", "t_a", "t_b"):  # t_a, t_b: teacher embeddings (embedding KD)
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        if "eval_set" in rows[0]:  # multilingual evaluation: the named set (language or xx-en) of each pair
            batch["eval_set"] = [r["eval_set"] for r in rows]
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Random order in which neighbours have similar lengths, so per-batch padding stays small.

    Shuffles, cuts the order into windows of `window` rows, sorts each window by length (`window=1`: a plain
    shuffle). The order depends only on the seed and the epoch Lightning sets, never on the global RNG, so a
    resumed run sees the same order. Under DDP Lightning wraps it and shards this order across ranks.
    """

    def __init__(self, lengths: list[int], window: int, seed: int = 0) -> None:
        self.lengths, self.window, self.seed, self.epoch = lengths, window, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        for start in range(0, len(order), self.window):
            yield from sorted(order[start:start + self.window], key=self.lengths.__getitem__)

    def __len__(self) -> int:
        return len(self.lengths)


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


class PairDataModule(pl.LightningDataModule):
    """Pairs for teachers (tokenised jointly) and students (each side apart), with cached teacher scores.

    The tokenisation is asked of the model being trained (`model.tokenization()`), so the collator always
    tokenises exactly as the model does: the backbone is given once, in the model.

    Args:
        train: a pair file (csv/tsv/jsonl/parquet), a catalog name such as `stsb/train`, or
            `hf:<id>[:<config>]:<split>`; a list concatenates several (e.g. `[stsb/train,
            runs/silver/pairs.parquet]`: rows without a label get gold NaN, which gold objectives leave out).
        val: pairs for validation and checkpoint selection (never a test split).
        test: pairs for `distill test`.
        predict: pairs (teacher) or texts (student, column `text_a_column` or `text`) for `distill predict`.
        text_a_column: column of the first text.
        text_b_column: column of the second text.
        label_column: column of gold labels (optional in the file).
        id_column: column of user-supplied pair ids; by default ids hash the texts in order.
        label_range: the declared range of gold labels, mapped to [0, 1] (catalog sets know theirs: STS-B [0, 5]).
        cache_dir: a score cache (`distill cache --out`) holding teacher scores for the train pairs, or a list
            of caches whose scores are merged (e.g. one for the gold pairs, one for mined pairs).
        batch_size: training batch size.
        eval_batch_size: batch size for validation, test and predict.
        max_pairs: use only the first N pairs of each split (smoke runs).
        group_by_length: batch training pairs of similar length (less padding, faster on CPU).
        seed: seed of the training order.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | None = None,
        test: str | None = None,
        predict: str | None = None,
        text_a_column: str = "text_a",
        text_b_column: str = "text_b",
        label_column: str | None = "label",
        id_column: str | None = None,
        label_range: tuple[float, float] | None = None,
        cache_dir: str | list[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_pairs: int | None = None,
        group_by_length: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sources = {"train": train, "val": val, "test": test, "predict": predict}
        self.datasets: dict[str, Dataset] = {}
        self.label_ranges: dict[str, tuple[float, float] | None] = {}

    def rows(self, split: str, texts: bool = False) -> Dataset:
        """Validated, untokenised rows of a split (`train`, `val`, `test`, `predict`); `texts` reads single
        texts (a student's predict input) instead of pairs."""
        source = self.sources[split]
        if source is None or source == []:
            raise DataError(f"no {split} data configured: set data.init_args.{split}")
        hp = self.hparams
        if texts:
            rows = read_texts(source, text_column=hp.text_a_column, id_column=hp.id_column)
        else:
            parts, ranges = [], []
            for one in [source] if isinstance(source, str) else source:
                part, label_range = read_pairs(one, hp.text_a_column, hp.text_b_column, hp.label_column,
                                               hp.id_column, tuple(hp.label_range) if hp.label_range else None,
                                               keep_columns=self._keep_columns(split))
                parts.append(part)
                ranges.append(label_range)
            rows = concat_pairs(parts, source)
            self.label_ranges[split] = next((r for r in ranges if r is not None), None)
        if hp.max_pairs is not None:
            rows = rows.select(range(min(hp.max_pairs, len(rows))))
        return rows

    def _keep_columns(self, split: str) -> tuple[str, ...]:
        return ()

    def _tokenization(self) -> dict[str, Any]:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or not hasattr(model, "tokenization"):
            raise RuntimeError("PairDataModule needs a model with a tokenization() method (a teacher or DistillModule)")
        return model.tokenization()

    def _tokenised(self, split: str) -> tuple[Dataset, dict[str, Any]]:
        # tokenised once, then read back from Arrow (prepare_data on rank 0 writes it, setup on every rank reads)
        spec = self._tokenization()
        rows = self.rows(split, texts=split == "predict" and not spec["joint"])
        cache_file = tokenised_cache_file(rows, spec, split)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _drop_if_unreadable(cache_file, len(rows))
        rows = rows.map(tokenize, batched=True, fn_kwargs=spec, desc=f"tokenising {split}",
                        cache_file_name=str(cache_file), load_from_cache_file=True)
        return rows, spec

    def build(self, split: str) -> Dataset:
        """Tokenised rows of a split, with teacher scores joined in for a student's train split."""
        rows, spec = self._tokenised(split)
        _warn_truncated(rows, spec["max_length"], f"{self.sources[split]} ({split})")
        cache_dir = self.hparams.cache_dir
        if split == "train" and cache_dir:
            # the cache module reads data; import here to avoid a cycle
            from distill.cache import ScoreCache, join_caches

            rows = join_caches([ScoreCache(d) for d in ([cache_dir] if isinstance(cache_dir, str) else cache_dir)],
                               rows)
        return rows

    def _wanted(self, stage: str) -> tuple[str, ...]:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[stage]
        return tuple(s for s in wanted if self.sources[s] is not None or s != "val")

    def prepare_data(self) -> None:
        fn = getattr(self.trainer.state.fn, "value", self.trainer.state.fn)
        for split in self._wanted(fn if fn in ("fit", "validate", "test", "predict") else "fit"):
            self._tokenised(split)  # only the Arrow file: joins and warnings happen once, in setup

    def setup(self, stage: str) -> None:
        for split in self._wanted(stage):
            if split not in self.datasets:
                self.datasets[split] = self.build(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        tok = load_tokenizer(self._tokenization()["tokenizer"])
        dataset = self.datasets[split]
        size = self.hparams.batch_size if split == "train" else self.hparams.eval_batch_size
        collate = PairCollator(tok.pad_token_id or 0)
        if not shuffle:
            return DataLoader(dataset, batch_size=size, collate_fn=collate, num_workers=self.hparams.num_workers)
        key = "input_ids" if "input_ids" in dataset.column_names else "a_input_ids"
        lengths = token_lengths(dataset, key).tolist()
        window = size * 32 if self.hparams.group_by_length else 1
        return ResumableLoader(dataset, batch_size=size, collate_fn=collate, num_workers=self.hparams.num_workers,
                               sampler=LengthGroupedSampler(lengths, window=window, seed=self.hparams.seed),
                               datamodule=self)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)



class GroupCollator:
    """Pads a batch of groups: the query and every candidate share one width (one forward pass).

    Output: `q_input_ids`, `q_attention_mask` (batch, width); `c_input_ids`, `c_attention_mask`
    (batch * n_candidates, width), group-major (candidate j of group i at row i * n + j); `score`
    (batch, n_candidates) where the train split has a cache.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        queries = [r["q_input_ids"] for r in rows]
        candidates = [c for r in rows for c in r["c_input_ids"]]
        width = max(len(x) for x in queries + candidates)

        def pad(seqs: list[list[int]], value: int) -> Tensor:
            return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

        batch: dict[str, Any] = {
            "pair_id": [r["pair_id"] for r in rows],
            "q_input_ids": pad(queries, self.pad_token_id),
            "q_attention_mask": pad([[1] * len(q) for q in queries], 0),
            "c_input_ids": pad(candidates, self.pad_token_id),
            "c_attention_mask": pad([[1] * len(c) for c in candidates], 0),
        }
        if "score" in rows[0]:
            batch["score"] = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        return batch


def make_groups(rows: Dataset, n_candidates: int, group_column: str, source: Any) -> Dataset:
    """Tokenised pair rows (query = text_a, candidate = text_b) -> one row per group of `n_candidates`.

    Rows of a group keep their file order and the first is the positive; extra candidates beyond
    `n_candidates` are dropped (the hardest come first in `distill mine` output).

    Raises:
        DataError: a group with fewer candidates, or with two different queries.
    """
    members: dict[str, list[int]] = {}
    for i, g in enumerate(rows[group_column]):
        members.setdefault(g, []).append(i)
    short = [(g, len(ix)) for g, ix in members.items() if len(ix) < n_candidates]
    if short:
        g, n = short[0]
        raise DataError(f"{source}: {len(short)} of {len(members)} groups have fewer than 1 + n_negatives = "
                        f"{n_candidates} candidates (group {g!r} has {n}); lower data.init_args.n_negatives to "
                        f"{min(n for _, n in short) - 1} or mine more with `distill mine --n_negatives`")
    text_a, a_ids, b_ids = rows["text_a"], rows["a_input_ids"], rows["b_input_ids"]
    scores = rows["score"] if "score" in rows.column_names else None
    out: dict[str, list] = {"pair_id": [], "q_input_ids": [], "c_input_ids": []}
    if scores is not None:
        out["score"] = []
    for g, ix in members.items():
        ix = ix[:n_candidates]
        if len({normalise(text_a[i]) for i in ix}) != 1:
            raise DataError(f"{source}: group {g!r} has rows with different text_a (queries); a group is one query "
                            f"with its candidates: fix the file or data.init_args.group_column")
        out["pair_id"].append(g)
        out["q_input_ids"].append(a_ids[ix[0]])
        out["c_input_ids"].append([b_ids[i] for i in ix])
        if scores is not None:
            out["score"].append([scores[i] for i in ix])
    return Dataset.from_dict(out)


class GroupDataModule(PairDataModule):
    """Grouped training data: (query, positive, k negatives) with each candidate's teacher score.

    The train file is a pair file with a group column (`distill mine --mode groups` writes one): rows of a
    group share `text_a` (the query), the first row's `text_b` is the positive, the next ones negatives. The
    cache scores it like any pair file (`distill cache`), so each candidate's teacher score is joined by
    `pair_id`. For MarginMSE, ListwiseKL and InfoNCE with hard negatives. Validation and test stay pairs.

    Args:
        group_column: the column that names each row's group.
        n_negatives: negatives per group (k); every group must bring at least 1 + k candidates.
        (the rest): as `PairDataModule`.
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | None = None,
        test: str | None = None,
        predict: str | None = None,
        group_column: str = "group",
        n_negatives: int = 3,
        text_a_column: str = "text_a",
        text_b_column: str = "text_b",
        label_column: str | None = "label",
        id_column: str | None = None,
        label_range: tuple[float, float] | None = None,
        cache_dir: str | list[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_pairs: int | None = None,
        group_by_length: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if n_negatives < 0:
            raise DataError(f"data.init_args.n_negatives is {n_negatives}; expected >= 0")
        super().__init__(train, val, test, predict, text_a_column, text_b_column, label_column, id_column,
                         label_range, cache_dir, batch_size, eval_batch_size, max_pairs, group_by_length, seed,
                         num_workers)

    def _keep_columns(self, split: str) -> tuple[str, ...]:
        return (self.hparams.group_column,) if split == "train" else ()

    def build(self, split: str) -> Dataset:
        rows = super().build(split)
        if split != "train":
            return rows
        return make_groups(rows, 1 + self.hparams.n_negatives, self.hparams.group_column, self.sources["train"])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split != "train":
            return super()._loader(split, shuffle)
        dataset = self.datasets[split]
        collate = GroupCollator(load_tokenizer(self._tokenization()["tokenizer"]).pad_token_id or 0)
        lengths = [len(x) for x in dataset["q_input_ids"]]
        window = self.hparams.batch_size * 32 if self.hparams.group_by_length else 1
        return ResumableLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=collate,
                               num_workers=self.hparams.num_workers, datamodule=self,
                               sampler=LengthGroupedSampler(lengths, window=window, seed=self.hparams.seed))
