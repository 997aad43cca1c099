"""`distill mine` -> `distill cache` -> `distill fit` on tiny models: silver pairs and hard-negative groups."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from cli_args import QUIET, ROOT, cache_args, student_args

from distill.cache import CacheError
from distill.cli import run
from distill.data import DataError, make_pair_id


def _run(argv: list[str]):  # noqa: ANN202 - the CLI or the tool's result
    with mock.patch("sys.argv", ["distill"]):
        return run(argv)


def _mine(tiny: str, pairs: dict[str, str], out: Path, *extra: str) -> Path:
    config = "groups" if "--mode=groups" in extra else "silver"
    return _run(["mine", "--config", str(ROOT / f"configs/mine/{config}.yaml"),
                 f"--student.init_args.backbone={tiny}", f"--sentences=[{pairs['train']}]", f"--out={out}",
                 "--max_pairs=null", *extra])


@pytest.fixture(scope="module")
def silver(tiny_backbone, pair_files, teacher_ckpt, tmp_path_factory) -> tuple[Path, Path]:
    """Mined silver pairs (no labels) and their teacher-score cache."""
    folder = tmp_path_factory.mktemp("silver")
    pairs = _mine(tiny_backbone, pair_files, folder / "pairs.parquet", f"--exclude=[{pair_files['train']}]")
    _run(cache_args(tiny_backbone, {"train": str(pairs)}, teacher_ckpt, folder / "cache"))
    return pairs, folder / "cache"


def test_mined_pairs_are_new_unique_and_have_stable_ids(silver, pair_files):
    """Silver pairs must not repeat a gold pair (either order) or each other, and carry the ids the cache joins
    on; the pool is the training sentences only."""
    frame = pd.read_parquet(silver[0])
    gold = pd.read_csv(pair_files["train"])
    gold_keys = {frozenset(p) for p in zip(gold.text_a, gold.text_b)}
    keys = [frozenset(p) for p in zip(frame.text_a, frame.text_b)]
    assert len(frame) > 50 and len(set(keys)) == len(keys) and not set(keys) & gold_keys
    assert (frame.text_a != frame.text_b).all()
    assert list(frame.pair_id) == [make_pair_id(a, b) for a, b in zip(frame.text_a, frame.text_b)]
    pool = set(gold.text_a) | set(gold.text_b)
    assert set(frame.text_a) | set(frame.text_b) <= pool


def test_mine_cache_fit_on_gold_plus_silver(tiny_backbone, pair_files, score_cache, silver, tmp_path):
    """The AugSBERT recipe end to end: gold + teacher-scored silver pairs; the gold term skips silver rows
    (NaN gold) instead of turning the loss into NaN."""
    pairs, cache = silver
    args = student_args(tiny_backbone, pair_files, tmp_path, None)
    cli = _run(["fit", *args, f"--data.init_args.train=[{pair_files['train']}, {pairs}]",
                f"--data.init_args.cache_dir=[{score_cache}, {cache}]", "--trainer.max_steps=4"])
    logged = cli.trainer.logged_metrics
    assert len(cli.datamodule.datasets["train"]) == 96 + len(pd.read_parquet(pairs))
    for key in ("train/teacher_mse", "train/gold_mse", "train/loss"):
        assert logged[key].isfinite(), key


def test_a_cache_lacking_the_mined_pairs_names_the_fix(tiny_backbone, pair_files, score_cache, silver, tmp_path):
    """Training on mined pairs with only the gold cache would have no target for them."""
    args = student_args(tiny_backbone, pair_files, tmp_path, score_cache)
    with pytest.raises(CacheError, match=r"have no teacher score.*distill cache.*data\.init_args\.cache_dir"):
        _run(["fit", *args, f"--data.init_args.train=[{pair_files['train']}, {silver[0]}]", "--trainer.max_steps=1"])


@pytest.fixture(scope="module")
def groups(tiny_backbone, pair_files, teacher_ckpt, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("groups")
    path = _mine(tiny_backbone, pair_files, folder / "groups.parquet", "--mode=groups",
                 f"--positives={pair_files['train']}", "--min_gold=null", "--n_negatives=3", "--skip_top=0")
    _run(cache_args(tiny_backbone, {"train": str(path)}, teacher_ckpt, folder / "cache"))
    return path, folder / "cache"


def _contrastive(tiny: str, pairs: dict[str, str], groups: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/student/contrastive.yaml"),
            f"--model.init_args.student.init_args.backbone={tiny}", f"--data.init_args.train={groups[0]}",
            f"--data.init_args.val={pairs['dev']}", f"--data.init_args.test={pairs['test']}",
            "--data.init_args.label_range=[0, 5]", f"--data.init_args.cache_dir={groups[1]}",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *QUIET, *extra]


def test_groups_mine_cache_fit_with_every_objective(tiny_backbone, pair_files, groups, tmp_path):
    """Grouped data feeds InfoNCE (with hard negatives), MarginMSE and listwise KL at once, each term logged."""
    frame = pd.read_parquet(groups[0])
    assert (frame.groupby("group").size() == 4).all()  # positive + 3 negatives per query
    cli = _run(_contrastive(tiny_backbone, pair_files, groups, tmp_path, "--trainer.max_steps=3",
                            "--model.init_args.gradient_checkpointing=true", "--trainer.accumulate_grad_batches=2"))
    encoder = cli.model.student.encoder
    assert getattr(encoder, "is_activation_checkpointing", None) or encoder.is_gradient_checkpointing
    logged = cli.trainer.logged_metrics
    for key in ("train/info_nce", "train/margin_mse", "train/listwise_kl"):
        assert logged[key].isfinite() and logged[key] > 0, key
    assert "val/spearman" in cli.trainer.callback_metrics


def test_groups_with_fewer_candidates_than_configured(tiny_backbone, pair_files, groups, tmp_path):
    """Asking for more negatives than were mined is a one-line error naming data.init_args.n_negatives."""
    with pytest.raises(DataError, match=r"fewer than 1 \+ n_negatives = 6.*data\.init_args\.n_negatives to 3"):
        _run(_contrastive(tiny_backbone, pair_files, groups, tmp_path, "--data.init_args.n_negatives=5",
                          "--trainer.max_steps=1"))


def test_group_objectives_on_pair_data_name_the_datamodule(tiny_backbone, pair_files, score_cache, tmp_path):
    """MarginMSE needs (query, candidates) groups; on plain pairs it would have nothing to take margins of."""
    args = student_args(tiny_backbone, pair_files, tmp_path, score_cache)
    with pytest.raises(ValueError, match=r"needs grouped data.*distill\.data\.GroupDataModule"):
        _run(["fit", *args, "--model.init_args.objectives.teacher_mse.class_path=distill.losses.MarginMSE",
              "--trainer.max_steps=1"])


def test_teacher_objective_without_a_cache_on_groups(tiny_backbone, pair_files, groups, tmp_path):
    """MarginMSE and listwise KL need the teacher's scores: without a cache, one line naming the key."""
    with pytest.raises(ValueError, match=r"'margin_mse' needs teacher scores.*data\.init_args\.cache_dir"):
        _run(_contrastive(tiny_backbone, pair_files, groups, tmp_path, "--data.init_args.cache_dir=null",
                          "--trainer.max_steps=1"))


def test_positives_missing_from_the_pool_are_one_line(tiny_backbone, pair_files, tmp_path):
    """A positive the pool lacks used to escape as a KeyError; now one line naming the file and the fix."""
    frame = pd.read_csv(pair_files["train"]).head(3)
    frame.loc[0, "text_b"] = "a sentence that is in no pool file."
    positives = tmp_path / "positives.csv"
    frame.to_csv(positives, index=False)
    with pytest.raises(DataError, match=r"positives.csv: 1 positives are not in the pool .*add their file to --sent"):
        _mine(tiny_backbone, pair_files, tmp_path / "groups.parquet", "--mode=groups", f"--positives={positives}",
              "--min_gold=null", "--n_negatives=1", "--skip_top=0")
