"""The datamodules: `PairDataModule` (pairs for teachers and students) and `GroupDataModule` (grouped training
data for listwise and margin objectives), with cached teacher scores joined into the training rows."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from datasets import Dataset
from torch.utils.data import DataLoader

from distill.cache_join import ScoreCache, join_caches
from distill.cache_keys import normalise
from distill.data.batches import GroupCollator, LengthGroupedSampler, LengthSortedSampler, PairCollator
from distill.data.reading import DataError, concat_pairs, read_pairs, read_texts
from distill.data.tokenised import (
    drop_if_unreadable,
    load_tokenizer,
    pair_lengths,
    token_lengths,
    tokenised_cache_file,
    tokenize,
    warn_truncated,
)
from distill.resume import ResumableLoader


class PairDataModule(pl.LightningDataModule):
    """Pairs for teachers (tokenised jointly) and students (each side apart), with cached teacher scores.

    The tokenisation is the model's (`model.tokenization()`), so the collator always tokenises exactly as the
    model does: the backbone is given once, in the model. `distill fit` (and the other Trainer verbs) pass it in
    as `tokenization`, linked from the configured model; a datamodule built without it asks the model of the
    trainer it is attached to.

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
        group_by_length: batch pairs of similar length (less padding, faster on CPU): training in a
            length-grouped random order, validation and test longest first (their metrics ignore row order;
            predict, and an evaluation cut short by `trainer.limit_val_batches`/`limit_test_batches`, keep file
            order).
        seed: seed of the training order.
        num_workers: DataLoader workers.
        documents: `text_b` holds documents (retrieval candidates), tokenised with the model's document prefix
            (e5's "passage: ") where it has one; False: both sides take its query prefix (a symmetric task: STS).
        tokenization: how to tokenise, as the model's `tokenization()` gives it (`tokenizer`, `max_length`,
            `joint`, `prefix`); the CLI links it from the model, so it is no config key. None: ask the model of
            the attached trainer.
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
        documents: bool = False,
        tokenization: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # every class's own arguments, subclasses' included (Lightning reads the __init__ frames up the chain);
        # the tokenisation is the model's, saved with the model
        self.save_hyperparameters(ignore=["tokenization"])
        self.tokenization = tokenization
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

    def _documents(self, split: str) -> bool:
        return self.hparams.documents

    def _tokenization(self) -> dict[str, Any]:
        if self.tokenization is not None:
            return self.tokenization
        # built in Python without one: the model being trained says how it tokenises
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or not hasattr(model, "tokenization"):
            raise RuntimeError(f"{type(self).__name__} needs `tokenization` (a model's tokenization(): tokenizer, "
                               f"max_length, joint, prefix) or a trainer whose model has a tokenization() method "
                               f"(a teacher or DistillModule)")
        return model.tokenization()

    def _stage(self) -> str:
        """The Trainer verb running (`fit`, `validate`, `test`, `predict`); `fit` without a trainer."""
        fn = self.trainer.state.fn if self.trainer is not None else "fit"
        fn = getattr(fn, "value", fn)
        return fn if fn in ("fit", "validate", "test", "predict") else "fit"

    def _tokenised(self, split: str) -> tuple[Dataset, dict[str, Any]]:
        # tokenised once, then read back from Arrow (prepare_data on rank 0 writes it, setup on every rank reads)
        spec = dict(self._tokenization())
        # a cross-encoder's second text is always its document (its own tokenization says so, as the cache and
        # mining read it); a bi-encoder's only where the data module says so
        if spec.get("document_prefix") is None or not (spec["joint"] or self._documents(split)):
            spec.pop("document_prefix", None)  # both sides as queries: the tokenised file's name stays as before
        rows = self.rows(split, texts=split == "predict" and not spec["joint"])
        cache_file = tokenised_cache_file(rows, spec, split)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        drop_if_unreadable(cache_file, len(rows))
        rows = rows.map(tokenize, batched=True, fn_kwargs=spec, desc=f"tokenising {split}",
                        cache_file_name=str(cache_file), load_from_cache_file=True)
        return rows, spec

    def build(self, split: str) -> Dataset:
        """Tokenised rows of a split, with teacher scores joined in for a student's train split."""
        rows, spec = self._tokenised(split)
        warn_truncated(rows, spec["max_length"], f"{self.sources[split]} ({split})")
        cache_dir = self.hparams.cache_dir
        if split == "train" and cache_dir:
            rows = join_caches([ScoreCache(d) for d in ([cache_dir] if isinstance(cache_dir, str) else cache_dir)],
                               rows)
        return rows

    def _wanted(self, stage: str) -> tuple[str, ...]:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[stage]
        return tuple(s for s in wanted if self.sources[s] is not None or s != "val")

    def prepare_data(self) -> None:
        for split in self._wanted(self._stage()):
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
            sorted_eval = split in ("val", "test") and self.hparams.group_by_length and self._evaluates_all(split)
            sampler = LengthSortedSampler(pair_lengths(dataset)) if sorted_eval else None
            return DataLoader(dataset, batch_size=size, collate_fn=collate, num_workers=self.hparams.num_workers,
                              sampler=sampler)
        key = "input_ids" if "input_ids" in dataset.column_names else "a_input_ids"
        lengths = token_lengths(dataset, key).tolist()
        window = size * 32 if self.hparams.group_by_length else 1
        return ResumableLoader(dataset, batch_size=size, collate_fn=collate, num_workers=self.hparams.num_workers,
                               sampler=LengthGroupedSampler(lengths, window=window, seed=self.hparams.seed),
                               datamodule=self)

    def _evaluates_all(self, split: str) -> bool:
        # `limit_val_batches: 2` asks for a glance at some pairs: the first ones in file order, as before, not
        # the longest ones that a sorted order would put first
        limit = getattr(self.trainer, f"limit_{split}_batches", 1.0) if self.trainer is not None else 1.0
        return isinstance(limit, float) and limit == 1.0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)


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
    The train candidates are documents: a model with a document prefix (e5's "passage: ") gets it on them
    (`documents: false` to tokenise them as queries); validation and test pairs are tokenised as queries.

    Args:
        group_column: the column that names each row's group.
        n_negatives: negatives per group (k); every group must bring at least 1 + k candidates.
        (the rest): as `PairDataModule`.
    """

    def __init__(self, group_column: str = "group", n_negatives: int = 3, documents: bool = True,
                 **kwargs: Any) -> None:
        # **kwargs: PairDataModule's arguments, which jsonargparse reads from its signature (data.init_args.train, ...)
        if n_negatives < 0:
            raise DataError(f"data.init_args.n_negatives is {n_negatives}; expected >= 0")
        super().__init__(documents=documents, **kwargs)

    def _keep_columns(self, split: str) -> tuple[str, ...]:
        return (self.hparams.group_column,) if split == "train" else ()

    def _documents(self, split: str) -> bool:
        return split == "train" and self.hparams.documents

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

