"""Shared fixtures: a tiny random BERT backbone (no network) and tiny pair files."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DISTILL_HOME"] = tempfile.mkdtemp(prefix="distill-home-")  # tokenised caches stay out of ~/.cache
sys.path.insert(0, str(Path(__file__).parent))  # the helpers beside the tests (cli_args, killer)

from cli_args import cache_args, teacher_args  # noqa: E402

from distill.cli import run  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("a man woman child dog cat plays playing guitar piano eats food runs walks park street the is on in "
         "with car red blue big small sits mat reads book sings song rides horse bike").split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "."


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with a word-level vocab covering WORDS, saved as a local folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *sorted(set(WORDS))]
    # transformers 5 ignores `vocab_file` here (every word would be [UNK]): pass the vocabulary itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")  # the classic file too (a test edits it)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """A CSV of n pairs with labels in [0, 5] (more shared words -> higher label)."""
    import csv

    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text_a", "text_b", "label"])
        for _ in range(n):
            a = sentence(rng)
            b = a if rng.random() < 0.3 else sentence(rng)
            overlap = len(set(a.split()) & set(b.split())) / len(set(a.split()) | set(b.split()))
            w.writerow([a, b, f"{5 * overlap:.2f}"])
    return path


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pairs")
    return {split: str(write_pairs(folder / f"{split}.csv", n, seed))
            for split, n, seed in (("train", 96, 0), ("dev", 48, 1), ("test", 48, 2))}


@pytest.fixture(scope="session")
def teacher_ckpt(tiny_backbone: str, pair_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("teacher")
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *teacher_args(tiny_backbone, pair_files, out), "--trainer.max_epochs=2"])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert Path(best).is_file() and "val/spearman" in cli.trainer.callback_metrics
    return best


@pytest.fixture(scope="session")
def score_cache(tiny_backbone, pair_files, teacher_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "train"
    with mock.patch("sys.argv", ["distill"]):
        run(cache_args(tiny_backbone, pair_files, teacher_ckpt, out))
    return out


@pytest.fixture(scope="session")
def student_ckpt(tiny_backbone: str, pair_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny student with a DSE head (gold-only: no cache needed), fitted for a few steps."""
    from cli_args import student_args

    out = tmp_path_factory.mktemp("student")
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *student_args(tiny_backbone, pair_files, out, None), "--trainer.max_epochs=1",
                   "--trainer.limit_train_batches=3",
                   "--model.init_args.objectives.teacher_mse.init_args.weight=0"])
    return cli.trainer.checkpoint_callback.best_model_path
