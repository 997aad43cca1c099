"""The sentence pool for embedding-level distillation (`distill.pool`) and Matryoshka2D over EmbeddingMSE: reading,
exclusion of evaluation sentences, the pair rows, bad input, and the per-depth regression by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from distill import catalog
from distill.data import DataError
from distill.losses import EmbeddingMSE, Matryoshka2D
from distill.module import DistillModule
from distill.pool import SentencePoolDataModule, pool_texts
from students import BiEncoder

TEACHER = "any-bi-encoder"  # the pool's rows never read it; only a fit computes the vectors


def _lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_pool_dedups_drops_evaluation_sentences_and_pairs_distinct_sentences(tmp_path: Path) -> None:
    test_sentence = catalog.texts("stsb/test")[5]
    fresh = [f"Fresh sentence number {i}." for i in range(9)]
    first = _lines(tmp_path / "a.txt", [fresh[0], test_sentence, fresh[1], f"  {fresh[0]} ", fresh[2]])
    second = tmp_path / "b.csv"
    pd.DataFrame({"text": fresh[3:]}).to_csv(second, index=False)
    data = SentencePoolDataModule(pool=[first, str(second)], teacher_embeddings=TEACHER, languages=["en"])
    pool = data.pool_sentences()
    # 9 fresh sentences, one left out for an even count; the test sentence and the duplicate gone
    assert len(pool) == 8 and set(pool) < set(fresh)
    assert data.report["dropped_excluded"] == 1 and data.report["duplicates"] == 1 and data.report["read"] == 11
    rows = data.rows("train")
    assert len(rows) == 4
    assert all(r["text_a"] != r["text_b"] and r["src_a"] == r["text_a"] and r["src_b"] == r["text_b"] for r in rows)
    assert all(r["gold"] != r["gold"] and not r["pivot_id"] for r in rows)  # NaN: no score for the score objectives
    kept = SentencePoolDataModule(pool=[first], exclude=[], teacher_embeddings=TEACHER, languages=["en"])
    assert test_sentence in kept.pool_sentences()


def test_pool_is_capped_seeded_and_mixed_with_teacher_scored_pairs(tmp_path: Path) -> None:
    source = _lines(tmp_path / "p.txt", [f"Pool sentence {i}." for i in range(40)])

    def pool(seed: int) -> SentencePoolDataModule:
        return SentencePoolDataModule(pool=[source], max_sentences=10, teacher_embeddings=TEACHER, seed=seed,
                                      pivot_languages=["en"], max_source_pairs=3, mix_ratio=0.0, languages=["en"])

    data = pool(0)
    rows = data.rows("train")
    assert len(data.pool_sentences()) == 10 and len(rows) == 3 + 5
    assert sum(bool(r["pivot_id"]) for r in rows) == 3  # the STS-B train pairs, with a gold label
    assert all(r["gold"] == r["gold"] for r in rows if r["pivot_id"])
    assert pool(0).pool_sentences() == data.pool_sentences() != pool(1).pool_sentences()


def test_parallel_sets_give_their_english_side() -> None:
    english = pool_texts("tatoeba_challenge/deu")
    rows = catalog.load("tatoeba_challenge/deu").rows
    assert english == list(rows["source"]) and not set(english) & set(rows["translation"])


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"pool": []}, "data.init_args.pool is empty"),
    ({"pool": ["stsb/train"], "teacher_embeddings": None}, "data.init_args.teacher_embeddings is unset"),
    ({"pool": ["stsb/train"], "max_sentences": 1}, "data.init_args.max_sentences is 1"),
])
def test_pool_bad_arguments_are_one_line(kwargs: dict, says: str) -> None:
    with pytest.raises(DataError) as err:
        SentencePoolDataModule(**{"teacher_embeddings": TEACHER, **kwargs})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_pool_bad_sources_are_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"sentence": ["a b c."]}).to_csv(table, index=False)
    for source, says in [(str(table), "t.csv: no `text` column (columns: sentence)"),
                         ("squad_dev", "squad_dev is a retrieval set"),
                         (str(tmp_path / "missing.txt"), "missing.txt is neither a catalog name nor a file")]:
        with pytest.raises(DataError) as err:
            pool_texts(source)
        assert says in str(err.value) and "\n" not in str(err.value), err.value


def test_matryoshka_embedding_mse_regresses_each_depth_onto_the_teacher(tiny_backbone: str) -> None:
    """Each listed depth's pooled, renormalised embedding is pulled onto the teacher's vector (a layer-reduced
    student's target); computed here from transformers' hidden states by hand."""
    torch.manual_seed(0)
    student = BiEncoder(tiny_backbone).eval()
    module = DistillModule(student, {"kd": Matryoshka2D(EmbeddingMSE(), points=[[1, None], [None, None]],
                                                        point_weights=[0.5, 1.0])}).eval()
    tok = student.tokenizer
    both = tok(["a man plays guitar.", "the dog runs.", "a woman plays piano.", "a cat sits."], padding=True,
               return_tensors="pt")
    teacher = F.normalize(torch.randn(4, 32), dim=-1)
    batch = {"a_input_ids": both["input_ids"][:2], "a_attention_mask": both["attention_mask"][:2],
             "b_input_ids": both["input_ids"][2:], "b_attention_mask": both["attention_mask"][2:],
             "t_a": teacher[:2], "t_b": teacher[2:], "pair_id": ["p0", "p1"]}
    with torch.no_grad():
        total = module.training_step(batch, 0)
        states = student.encoder(**both, output_hidden_states=True).hidden_states
        mask = both["attention_mask"].unsqueeze(-1).float()

        def distance(layer: int) -> float:
            emb = F.normalize((states[layer] * mask).sum(1) / mask.sum(1), dim=-1)
            return (emb - teacher).pow(2).sum(-1).mean().item()

    assert total.item() == pytest.approx(0.5 * distance(1) + distance(2), rel=1e-5)
    assert distance(1) != pytest.approx(distance(2), rel=1e-3)


def test_matryoshka_embedding_mse_refuses_a_cut_width(tiny_backbone: str) -> None:
    with pytest.raises(ValueError) as err:
        DistillModule(BiEncoder(tiny_backbone), {"kd": Matryoshka2D(EmbeddingMSE(), points=[[None, None], [1, 8]])})
    assert "every point needs the full width (null); [[1, 8]] cut it" in str(err.value)
    assert "\n" not in str(err.value)
