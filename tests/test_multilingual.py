"""Multilingual data, cross-lingual pivots, embedding-level KD and per-language evaluation (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from cli_args import QUIET, ROOT, cache_args
from scipy.stats import spearmanr

from distill import catalog
from distill.cache_join import ScoreCache, join_caches
from distill.cli import run
from distill.data import DataError, make_pair_id
from distill.evaluation import language_table, tatoeba_accuracy
from distill.losses import EmbeddingMSE, ScoreRegression
from distill.multilingual import eval_pairs, pivot_pairs, read_stsb_mt
from distill.score_cache import CacheError


def test_pivot_pairs_point_every_language_at_the_english_pair() -> None:
    rows = pivot_pairs(["en", "de", "zh"], "train", mix_ratio=0.5, max_source_pairs=20, seed=3)
    en = read_stsb_mt("en", "train")
    english = {make_pair_id(a, b): (a, b, label) for a, b, label in zip(en.text_a, en.text_b, en.label)}
    langs = set()
    for row in rows:
        a, b, label = english[row["pivot_id"]]  # every pivot is an English STS-B train pair
        assert (row["src_a"], row["src_b"]) == (a, b) and row["label"] == label
        langs.add((row["lang_a"], row["lang_b"]))
        if row["lang_a"] == row["lang_b"] == "en":
            assert row["pair_id"] == row["pivot_id"]
        if "en" in (row["lang_a"], row["lang_b"]) and row["lang_a"] != row["lang_b"]:
            assert row["text_a"] == a or row["text_b"] == b  # a mixed pair keeps one English side
    assert {("en", "en"), ("de", "de"), ("zh", "zh")} <= langs and ("de", "en") in langs | {("en", "de")}
    assert len({r["pivot_id"] for r in rows}) == 20
    assert rows["pair_id"] == pivot_pairs(["en", "de", "zh"], "train", 0.5, 20, seed=3)["pair_id"]  # seeded
    assert len(pivot_pairs(["de"], "train", mix_ratio=0.0, max_source_pairs=20)) == 20


def test_eval_pairs_name_sets_and_pair_translations_with_english() -> None:
    rows = eval_pairs(["de"], ["de-en"], "test", max_pairs=5)
    de, en = read_stsb_mt("de", "test"), read_stsb_mt("en", "test")
    cross = [r for r in rows if r["eval_set"] == "de-en"]
    assert len(cross) == 5 and all(r["text_a"] in set(de.text_a) and r["text_b"] in set(en.text_b) for r in cross)
    with pytest.raises(DataError, match="not of the form xx-yy"):
        eval_pairs(["de"], ["deen"], "test")


def test_bad_language_codes_and_misaligned_translations_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.init_args.languages: unknown language code\(s\) \['xx'\]"):
        pivot_pairs(["de", "xx"])
    with pytest.raises(catalog.CatalogError, match="unknown language code 'qq'"):
        catalog.tatoeba_code("qq")
    assert catalog.tatoeba_code("zh") == "cmn" and catalog.tatoeba_code("swe") == "swe"
    source, copy = catalog.data_root() / "stsb_multi_mt", tmp_path / "stsb_multi_mt"
    copy.mkdir()
    for lang in ("en", "de"):
        lines = (source / f"stsb-{lang}-dev.csv").read_text(encoding="utf-8").splitlines()
        (copy / f"stsb-{lang}-dev.csv").write_text("\n".join(lines[: 50 if lang == "de" else 60]) + "\n")
    with pytest.raises(DataError, match=r"stsb_multi_mt/de/dev: 50 rows but stsb_multi_mt/en/dev has 60"):
        read_stsb_mt("de", "dev", root=tmp_path)


def test_a_pivot_without_a_teacher_score_is_named(score_cache: Path) -> None:
    rows = pivot_pairs(["de"], "train", mix_ratio=0.0, max_source_pairs=3)
    with pytest.raises(CacheError, match=r"3 of 3 training pairs have no teacher score \(first pivot_id"):
        join_caches([ScoreCache(score_cache)], rows)


def test_embedding_mse_and_score_range_by_hand() -> None:
    student = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    teacher = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    assert EmbeddingMSE()(student, teacher).item() == pytest.approx((2.0 + 0.0) / 2)
    with pytest.raises(ValueError, match="teacher bi-encoder must have the student's width"):
        EmbeddingMSE()(student, torch.zeros(2, 3))
    scores, targets = torch.tensor([0.9, 0.85]), torch.tensor([1.0, 0.0])
    # targets 1.0 -> 1.0, 0.0 -> 0.8: ((0.9-1.0)^2 + (0.85-0.8)^2) / 2
    assert ScoreRegression(target_range=(0.8, 1.0))(scores, targets).item() == pytest.approx((0.01 + 0.0025) / 2)
    with pytest.raises(ValueError, match="target_range"):
        ScoreRegression(target_range=(1.0, 0.8))


def test_tatoeba_accuracy_counts_translations_found_first() -> None:
    # a perfect encoder for this test: each sentence's vector is its line number in its own file
    from distill.catalog import read_tatoeba

    xx, en = read_tatoeba("de")
    index = {t: i for i, t in enumerate(xx[:50])} | {t: i for i, t in enumerate(en[:50])}

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([index[t] for t in texts]), 50).float()

    assert tatoeba_accuracy(encode, ["de"], max_sentences=50) == {"de-en": 1.0, "en-de": 1.0}
    table = language_table({"test/spearman_cosine/de": 0.5, "test/tatoeba_acc/de-en": 0.9, "test/spearman": 0.1})
    assert table == [{"set": "de", "spearman_cosine": 0.5}, {"set": "de-en", "tatoeba_acc": 0.9}]


@pytest.fixture(scope="module")
def pivot_cache(tiny_backbone: str, teacher_ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher's scores of the English pivots of 12 source pairs."""
    rows = pivot_pairs(["en"], "train", max_source_pairs=12)
    folder = tmp_path_factory.mktemp("pivots")
    pd.DataFrame({"text_a": rows["text_a"], "text_b": rows["text_b"], "label": rows["label"]}).to_csv(
        folder / "pivots.csv", index=False)
    with mock.patch("sys.argv", ["distill"]):
        run(cache_args(tiny_backbone, {"train": str(folder / "pivots.csv")}, teacher_ckpt, folder / "cache"))
    return folder / "cache"


def multilingual_args(tiny: str, out: Path, cache: Path | None) -> list[str]:
    return ["--config", str(ROOT / "configs/multilingual/student.yaml"),
            f"--model.init_args.student.init_args.backbone={tiny}", "--model.init_args.student.init_args.prefix=",
            "--data.init_args.languages=[en, de]", "--data.init_args.max_source_pairs=12",
            "--data.init_args.max_val_pairs=8", "--data.init_args.val_languages=[en, de]",
            "--data.init_args.test_languages=[en, de]", "--data.init_args.test_cross=[de-en]",
            "--data.init_args.max_test_pairs=24", f"--data.init_args.teacher_embeddings={tiny}",
            "--data.init_args.teacher_embeddings_prefix=", f"--data.init_args.cache_dir={cache or 'null'}",
            "--data.init_args.batch_size=8", f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", "--trainer.limit_train_batches=3",
            "--trainer.val_check_interval=1.0",
            "--trainer.callbacks.init_args.tatoeba=[de, sv]", "--trainer.callbacks.init_args.max_sentences=20",
            *QUIET]


def test_crosslingual_fit_and_per_language_test(tiny_backbone: str, pivot_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    with mock.patch("sys.argv", ["distill"]):
        fit = run(["fit", *multilingual_args(tiny_backbone, tmp_path, pivot_cache)])
    logged = fit.trainer.callback_metrics
    for term in ("train/teacher_mse", "train/embedding_kd"):
        assert torch.isfinite(logged[term])
    assert {"val/spearman_cosine/de", "val/spearman_cosine/de-en", "val/spearman_cosine/en"} <= set(logged)
    assert fit.datamodule.datasets["train"][0]["t_a"] is not None  # teacher embeddings joined
    best = fit.trainer.checkpoint_callback.best_model_path
    from distill import tracking

    logged_tables: list[tuple[str, list]] = []
    monkeypatch.setattr(tracking, "log_table", lambda name, rows, run=None: logged_tables.append((name, rows)))
    with mock.patch("sys.argv", ["distill"]):
        test = run(["test", *multilingual_args(tiny_backbone, tmp_path, pivot_cache), "--ckpt_path", best,
                    "--trainer.precision=32-true"])  # fp32 like `encode`, for the comparison below
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items()}
    for key in ("test/spearman_cosine/en", "test/spearman_cosine/de", "test/spearman_cosine/de-en",
                "test/tatoeba_acc/de-en", "test/tatoeba_acc/en-sv"):
        assert key in metrics, key
    # the memoised, per-set test equals a direct computation with the same student
    student = test.model.student
    rows = eval_pairs(["de"], [], "test", max_pairs=24)
    u, v = student.encode(rows["text_a"]), student.encode(rows["text_b"])
    direct = spearmanr(torch.nn.functional.cosine_similarity(u, v).numpy(), rows["label"]).statistic
    assert metrics["test/spearman_cosine/de"] == pytest.approx(direct, abs=1e-3)
    assert metrics["test/spearman"] == pytest.approx(
        sum(metrics[f"test/spearman_cosine/{s}"] for s in ("en", "de", "de-en")) / 3, abs=1e-5)
    table = json.loads(next(tmp_path.rglob("multilingual.json")).read_text())
    assert {r["set"] for r in table} >= {"en", "de", "de-en", "sv-en", "en-sv"}
    assert logged_tables == [("test/multilingual", table)]  # the same table goes to W&B when a run is active


def test_embedding_objective_without_teacher_embeddings_is_named(tiny_backbone: str, pivot_cache: Path,
                                                                  tmp_path: Path) -> None:
    args = [*multilingual_args(tiny_backbone, tmp_path, pivot_cache), "--data.init_args.teacher_embeddings=null"]
    with mock.patch("sys.argv", ["distill"]), pytest.raises(ValueError, match=r"objective 'embedding_kd'.*"
                                                            r"data.init_args.teacher_embeddings"):
        run(["fit", *args])


def test_multilingual_sweep_dry_runs(tiny_backbone: str, pivot_cache: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Languages, mixing and objective weights of the multilingual recipe are keys the fit accepts, and the
    sweep's metric is logged by a 2-step run (W&B offline, one run)."""
    monkeypatch.chdir(ROOT)  # sweep commands name their recipe relative to the project root
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    tiny = [a for a in multilingual_args(tiny_backbone, tmp_path, pivot_cache)[2:]
            if not a.startswith(("--trainer.", "--data.init_args.languages", "--data.init_args.val_languages"))]
    # 2 validation batches of 8 pairs must reach a set: keep the dev sets tiny, in the sweep's fixed languages
    tiny += ["--data.init_args.max_val_pairs=1", "--trainer.precision=32-true"]
    with mock.patch("sys.argv", ["distill"]):
        results = run(["sweep", "--config", "configs/sweeps/multilingual.yaml", "--dry_run", "--count=1",
                       f"--args={json.dumps(tiny)}", f"--out={tmp_path / 'sweep'}"])
    assert len(results) == 1 and results[0]["metric"] is not None
    assert any(k.startswith("val/spearman_cosine/") for k in results[0]["summary"])


def test_teacher_prefix_is_an_option_saved_with_the_model(tiny_backbone: str) -> None:
    from distill.data import tokenize
    from teachers import CrossEncoder

    teacher = CrossEncoder(backbone=tiny_backbone, prefix="query: ")
    spec = teacher.tokenization()
    assert spec["prefix"] == "query: " and teacher.hparams.prefix == "query: "
    plain = tokenize({"text_a": ["a b"], "text_b": ["c"]}, tiny_backbone, 32, True)
    prefixed = tokenize({"text_a": ["a b"], "text_b": ["c"]}, tiny_backbone, 32, True, "query: ")
    assert len(prefixed["input_ids"][0]) > len(plain["input_ids"][0])  # both texts carry the prefix
