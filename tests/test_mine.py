"""`distill mine` -> `distill cache` -> `distill fit` on tiny models: silver pairs and hard-negative groups."""

from __future__ import annotations

import random
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from cli_args import QUIET, ROOT, cache_args, student_args

from distill import mine
from distill.cache import CacheError
from distill.cli import run
from distill.data import DataError, make_pair_id
from distill.score_cache import sha256_file, shard_name, write_json_atomic, write_shard


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


# ----------------------------------------------------------------- negatives: rank window, random, false negatives
POOL = ["query.", "positive.", "c1.", "c2.", "c3.", "c4.", "c5.", "c6."]  # c1 nearest to the query, then c2, ...


def _pool_emb() -> torch.Tensor:
    """Unit vectors at growing angles from the query's: the student ranks c1, positive?, c2, ... by construction."""
    angles = {"query.": 0.0, "positive.": 0.15, "c1.": 0.1, "c2.": 0.2, "c3.": 0.3, "c4.": 0.4, "c5.": 0.5, "c6.": 0.6}
    return torch.tensor([[np.cos(angles[t]), np.sin(angles[t])] for t in POOL], dtype=torch.float32)


def _positives(tmp_path: Path) -> str:
    path = tmp_path / "positives.csv"
    pd.DataFrame({"text_a": ["query."], "text_b": ["positive."]}).to_csv(path, index=False)
    return str(path)


def _negatives(frame: pd.DataFrame) -> list[str]:
    return list(frame.text_b[1:])


TEACHER = {"positive.": 0.8, "c1.": 0.9, "c2.": 0.77, "c3.": 0.7, "c4.": 0.1, "c5.": 0.75, "c6.": 0.2}


def _scorer(text_a: list[str], text_b: list[str]) -> np.ndarray:
    """Hand-made teacher scores of (query, text): c1 above the positive, c2 within 0.95 of it (0.77 > 0.76)."""
    return np.array([TEACHER[b] for b in text_b], np.float32)


def test_false_negative_filter_on_hand_made_scores():
    """NV-Retriever's relative margin: dropped where score > margin x the group's positive (0.95 x 0.5 = 0.475
    drops 0.476 but not 0.47); NaN padding never dropped."""
    positive = np.array([1.0, 0.5])
    candidates = np.array([[0.96, 0.94, np.nan], [0.5, 0.47, 0.476]])
    got = mine.false_negatives(positive, candidates, 0.95)
    assert got.tolist() == [[True, False, False], [True, False, True]]


def test_hardest_negatives_are_unchanged_by_default(tmp_path):
    """No new option set: the nearest sentences after skip_top, the positive skipped (the behaviour before)."""
    frame = mine._groups(POOL, _pool_emb(), _positives(tmp_path), None, 3, 1, set())
    assert list(frame.text_b) == ["positive.", "c2.", "c3.", "c4."]  # c1 skipped by skip_top=1


def test_hardest_with_the_filter_takes_the_next_ones(tmp_path, capsys):
    """c1 (0.9) and c2 (0.77) outscore 0.95 x 0.8 = 0.76: dropped, reported, and c3, c4, c5 taken instead."""
    window = mine.Window("hardest", window_end=7, margin=0.95, scorer=_scorer)
    frame = mine._groups(POOL, _pool_emb(), _positives(tmp_path), None, 3, 0, set(), window)
    assert _negatives(frame) == ["c3.", "c4.", "c5."]
    assert "dropped 2 of 6 candidates in 1 of 1 groups" in capsys.readouterr().out


def test_a_filter_that_leaves_no_group_is_one_line(tmp_path):
    """With window_end 4 only c1..c3 are scored; c1 and c2 are dropped, so no group keeps 3 negatives: an error
    naming the margin and the fix, not an empty group file."""
    window = mine.Window("hardest", window_end=4, margin=0.95, scorer=_scorer)
    with pytest.raises(DataError, match=r"margin 0\.95\) no group keeps n_negatives=3 .*--window_end"):
        mine._groups(POOL, _pool_emb(), _positives(tmp_path), None, 3, 0, set(), window)


def test_window_samples_only_inside_the_rank_window(tmp_path):
    """negatives=window: skip the top 2 ranks (c1, positive), sample from ranks 2..5 (c2, c3, c4); over seeds,
    every one of them and nothing else is drawn."""
    drawn = set()
    for seed in range(12):
        window = mine.Window("window", window_end=5, rng=random.Random(seed))
        negatives = _negatives(mine._groups(POOL, _pool_emb(), _positives(tmp_path), None, 2, 2, set(), window))
        assert len(negatives) == 2 and len(set(negatives)) == 2
        drawn |= set(negatives)
    assert drawn == {"c2.", "c3.", "c4."}


def test_random_negatives_cover_the_pool(tmp_path):
    """negatives=random: any pool sentence but the query and its positive, distinct within a group."""
    drawn = set()
    for seed in range(20):
        window = mine.Window("random", rng=random.Random(seed))
        negatives = _negatives(mine._groups(POOL, _pool_emb(), _positives(tmp_path), None, 3, 0, set(), window))
        assert len(set(negatives)) == 3
        drawn |= set(negatives)
    assert drawn == {"c1.", "c2.", "c3.", "c4.", "c5.", "c6."}


def _cache(folder: Path, pairs: list[tuple[str, str, float]]) -> Path:
    """A score cache with raw scores for these pairs (identity transform), as `distill cache` lays it out."""
    folder.mkdir()
    write_shard(folder, 0, len(pairs), [make_pair_id(a, b) for a, b, _ in pairs], [s for _, _, s in pairs])
    name = shard_name(0, len(pairs))
    write_json_atomic(folder / "manifest.json", {
        "format": 1, "teacher": {"score_transform": "identity"},
        "data": {"fingerprint": "x", "source": "groups.parquet", "split": "train", "n_pairs": len(pairs),
                 "label_range": None},
        "shards": [{"file": name, "start": 0, "end": len(pairs), "rows": len(pairs),
                    "sha256": sha256_file(folder / name)}], "complete": True})
    return folder


def test_teacher_scores_from_a_cache(tmp_path):
    cache = _cache(tmp_path / "cache", [("query.", "positive.", 0.8), ("query.", "c1.", 0.9)])
    scores = mine.TeacherScores([str(cache)], None, None)(["query.", "query."], ["c1.", "positive."])
    assert scores.tolist() == pytest.approx([0.9, 0.8])


def test_candidates_without_a_cached_score_are_one_line(tmp_path):
    """A cache made for fewer candidates than the window asks for: one line naming the pair and the fix."""
    cache = _cache(tmp_path / "cache", [("query.", "positive.", 0.8), ("query.", "c1.", 0.9)])
    window = mine.Window("hardest", window_end=4, margin=0.95, scorer=mine.TeacherScores([str(cache)], None, None))
    with pytest.raises(DataError, match=r"2 of 4 \(query, candidate\) pairs have no cached score \(first 'query\.' / "
                                        r"'c2\.'\); run `distill cache` on a group file mined"):
        mine._groups(POOL, _pool_emb(), _positives(tmp_path), None, 1, 0, set(), window)


@pytest.mark.parametrize(("options", "message"), [
    ({"negatives": "window"}, r"negatives=window needs --window_end"),
    ({"false_negative_margin": 0.95, "window_end": 5}, r"needs teacher scores: --teacher_cache or --teacher"),
    ({"false_negative_margin": 0.95, "teacher_cache": ["c"]}, r"negatives=hardest needs --window_end"),
    ({"negatives": "random", "window_end": 5}, r"window_end does not apply to negatives=random"),
    ({"teacher_cache": ["c"]}, r"used by false_negative_margin only"),
])
def test_negative_options_that_do_not_fit(options, message):
    args = {"negatives": "hardest", "n_negatives": 3, "skip_top": 0, "window_end": None, "margin": None,
            "caches": None, "teacher": None, "teacher_ckpt": None}
    renamed = {"false_negative_margin": "margin", "teacher_cache": "caches"}
    args.update({renamed.get(k, k): v for k, v in options.items()})
    with pytest.raises(ValueError, match=message):
        mine._check_negative_options(**args)


def test_mine_filters_with_a_folder_teacher(tiny_backbone, pair_files, tmp_path, capsys):
    """`distill mine` end to end with the new keys and an off-the-shelf teacher scoring in process: the report
    is printed and no written negative scores above the margin of its positive (checked with transformers alone)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "teacher"
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    torch.nn.init.normal_(model.classifier.weight, std=30.0)  # the pooled outputs differ little
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    gold = pd.read_csv(pair_files["train"])
    with torch.no_grad():  # centre the logits, so scores spread around 0.5 instead of saturating
        enc = tok(list(gold.text_a), list(gold.text_b), padding=True, return_tensors="pt")
        model.classifier.bias -= model.eval()(**enc).logits.mean()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = _mine(tiny_backbone, pair_files, tmp_path / "groups.parquet", "--mode=groups",
                f"--positives={pair_files['train']}", "--min_gold=null", "--n_negatives=2", "--skip_top=1",
                "--negatives=window", "--window_end=8", "--false_negative_margin=0.99",
                "--teacher=teachers.FolderCrossEncoder", f"--teacher.folder={folder}")
    assert "false-negative filter (teacher score > 0.99 x the positive's): dropped" in capsys.readouterr().out
    frame = pd.read_parquet(out)
    assert (frame.groupby("group").size() == 3).all()
    enc = tok(list(frame.text_a), list(frame.text_b), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        frame["teacher"] = torch.sigmoid(model.eval()(**enc).logits.squeeze(-1)).numpy()
    for _, group in frame.groupby("group"):
        assert (group.teacher.iloc[1:] <= 0.99 * group.teacher.iloc[0] * (1 + 1e-5)).all()


class _TwoSided(torch.nn.Module):
    """A student whose documents and queries live in different places: documents `d0..d3` are the unit vectors
    e0..e3; a query (never a document here) is embedded as the vector its text names (`q->2` is e2)."""

    config = {"prefix": "query: "}

    def prefix_of(self, document: bool) -> str:
        return "passage: " if document else "query: "

    def encode(self, texts: list[str], batch_size: int = 32, document: bool = False) -> torch.Tensor:
        index = [int(t[1]) if document else int(t.split("->")[1]) for t in texts]
        assert document == all(t.startswith("d") for t in texts), texts  # each side with its own prefix
        return torch.eye(4)[index]


def test_groups_for_queries_outside_the_pool_rank_documents_by_the_query_encoding(tmp_path: Path):
    """Answer-sentence retrieval: questions are not in the sentence pool and a student with a document prefix
    encodes the two sides apart; the hardest negative is the document nearest to the query's own encoding."""
    pool = tmp_path / "pool.csv"
    pd.DataFrame({"text_a": ["d0", "d1", "d2", "d3"], "text_b": ["d0", "d1", "d2", "d3"]}).to_csv(pool, index=False)
    positives = tmp_path / "positives.csv"
    pd.DataFrame({"text_a": ["q->2", "q->3"], "text_b": ["d0", "d1"]}).to_csv(positives, index=False)
    out = mine.main(_TwoSided(), [str(pool)], str(tmp_path / "groups.csv"), mode="groups", positives=str(positives),
                    n_negatives=1)
    frame = pd.read_csv(out)
    assert frame.groupby("group")["text_b"].apply(list).to_dict() == {0: ["d0", "d2"], 1: ["d1", "d3"]}
    assert frame["similarity"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_teacher_scores_come_back_in_the_callers_order(tiny_backbone: str):
    """Pairs are scored longest first (less padding); the scores must return to the order asked, equal to scoring
    each pair alone (a mix-up after sorting would permute them: the lengths here all differ)."""
    from teachers import CrossEncoder

    torch.manual_seed(0)
    teacher = CrossEncoder(tiny_backbone)
    with torch.no_grad():  # a random head scores every pair ~0.5; spread them so a permutation would show
        for p in teacher.model.classifier.parameters():
            p.mul_(1000)
    a = ["a man.", "the cat sits on the mat with a dog.", "a dog runs in the park.", "red car."]
    b = ["a woman plays guitar in the street.", "a cat.", "the dog.", "a big red car is on the street with a man."]
    together = mine.TeacherScores(None, teacher, None, batch_size=4)(a, b)
    alone = [mine.TeacherScores(None, teacher, None, batch_size=1)([x], [y])[0] for x, y in zip(a, b)]
    assert np.allclose(together, alone, atol=1e-5, rtol=0)
    assert min(abs(x - y) for i, x in enumerate(alone) for y in alone[i + 1:]) > 1e-4, alone
