"""Pair data: reading and validating pair files, stable `pair_id`s, tokenisation and the pair datamodules.

One concept per module, each importing only those above it in this list:
- `distill.data.reading`: pair and text files to validated rows (`read_pairs`, `read_texts`, `DataError`);
- `distill.data.tokenised`: rows tokenised once and kept on disk (`tokenize`, `fingerprint`, `tokenised_cache_file`);
- `distill.data.batches`: collators that pad per batch, the length-grouped sampler;
- `distill.data.modules`: `PairDataModule`, `GroupDataModule`.
Every public name is importable from `distill.data`, and `distill.data.PairDataModule` is the `class_path` configs use.
"""

from distill.data.batches import GroupCollator, LengthGroupedSampler, LengthSortedSampler, PairCollator
from distill.data.modules import GroupDataModule, PairDataModule, make_groups
from distill.data.reading import (
    FORMATS,
    DataError,
    concat_pairs,
    is_blank,
    make_pair_id,
    normalise,
    read_pairs,
    read_texts,
)
from distill.data.tokenised import (
    fingerprint,
    load_tokenizer,
    pair_lengths,
    token_lengths,
    tokenised_cache_file,
    tokenize,
    tokenizer_fingerprint,
)

__all__ = [
    "FORMATS",
    "DataError",
    "GroupCollator",
    "GroupDataModule",
    "LengthGroupedSampler",
    "LengthSortedSampler",
    "PairCollator",
    "PairDataModule",
    "concat_pairs",
    "fingerprint",
    "is_blank",
    "load_tokenizer",
    "make_groups",
    "make_pair_id",
    "normalise",
    "pair_lengths",
    "read_pairs",
    "read_texts",
    "token_lengths",
    "tokenised_cache_file",
    "tokenize",
    "tokenizer_fingerprint",
]
