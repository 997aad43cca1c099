"""Retrieval metrics (distill.ir_eval) against values computed by hand: ties, negative cosines, cut-offs, a positive
ranked last, the shortcut that hands torchmetrics only the top of each ranking, and the callback's keys."""

from __future__ import annotations

import math
import types

import pytest
import torch
from datasets import Dataset, DatasetDict

from distill import ir_eval, retrieval
from distill.ir_eval import RetrievalEvaluation, evaluate_sets, flat_keys, ir_metrics, ranking_metrics


def test_ties_and_negative_scores_by_hand():
    """nDCG averages a tie (scikit-learn's rule); MRR ranks a tied positive after the negatives it ties with; a
    positive at rank 1 with a negative cosine still counts (torchmetrics alone would drop it: preds <= 0)."""
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1],       # positive (doc 1) tied with doc 2 at ranks 2-3
                           [-0.1, -0.5, -0.6, -0.9]])  # positive first, every score negative
    got = ranking_metrics(scores, [{1: 1}, {0: 1}])
    tie_gain = 0.5 * (1 / math.log2(3) + 1 / math.log2(4))  # the gain spread over positions 2 and 3
    assert got["ndcg@10"] == pytest.approx((tie_gain + 1.0) / 2, abs=1e-6)
    assert got["mrr@10"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-6)
    assert got["recall@100"] == pytest.approx(1.0)


def test_graded_relevance_by_hand():
    """Relevance is nDCG's gain: 2 at rank 1 and 1 at rank 4, against the ideal order 2, 1."""
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    got = ranking_metrics(scores, [{0: 2, 3: 1}])
    assert got["ndcg@10"] == pytest.approx((2 + 1 / math.log2(5)) / (2 + 1 / math.log2(3)), abs=1e-6)
    assert got["mrr@10"] == pytest.approx(1.0)


def test_a_collapsed_model_scores_near_zero():
    """Every document scored alike (a collapsed student): the positive counts as ranked last among the ties for
    MRR and recall, instead of wherever topk's order happens to put it."""
    scores = torch.zeros(2, 150)
    got = ranking_metrics(scores, [{0: 1}, {75: 1}])
    assert got["mrr@10"] == 0.0 and got["recall@100"] == 0.0
    assert got["ndcg@10"] == pytest.approx(sum(1 / math.log2(i + 2) for i in range(10)) / 150, abs=1e-6)


def _ranked_at(rank: int, n_docs: int = 150) -> torch.Tensor:
    """Scores (1, n_docs) placing document 0 at `rank` (1-based), the others in a fixed order."""
    order = [d for d in range(1, n_docs)]
    order.insert(rank - 1, 0)
    scores = torch.empty(n_docs)
    scores[torch.tensor(order)] = torch.linspace(1.0, -1.0, n_docs)
    return scores.unsqueeze(0)


@pytest.mark.parametrize(("rank", "ndcg", "mrr", "recall"), [
    (1, 1.0, 1.0, 1.0),
    (10, 1 / math.log2(11), 0.1, 1.0),
    (11, 0.0, 0.0, 1.0),   # beyond nDCG@10 and MRR@10, within recall@100
    (100, 0.0, 0.0, 1.0),
    (101, 0.0, 0.0, 0.0),  # just beyond recall@100
    (150, 0.0, 0.0, 0.0),  # ranked last
])
def test_cut_offs_on_a_corpus_larger_than_100(rank, ndcg, mrr, recall):
    """recall@100 means something only on a corpus of more than 100 documents (on 100 or fewer it is always 1):
    150 here, with the positive moved across each cut-off."""
    got = ranking_metrics(_ranked_at(rank), [{0: 1}])
    assert got == pytest.approx({"ndcg@10": ndcg, "mrr@10": mrr, "recall@100": recall}, abs=1e-6)


def _reference(scores: torch.Tensor, relevance: list[dict[int, float]]) -> dict[str, float]:
    """The textbook formulas over the full ranking (no ties in the scores it is given)."""
    ndcg = mrr = recall = 0.0
    for row, rel in zip(scores, relevance):
        ranking = row.argsort(descending=True).tolist()
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        ndcg += dcg / ideal
        mrr += next((1 / (i + 1) for i, d in enumerate(ranking[:10]) if d in rel), 0.0)
        recall += len(set(ranking[:100]) & set(rel)) / len(rel)
    n = len(relevance)
    return {"ndcg@10": ndcg / n, "mrr@10": mrr / n, "recall@100": recall / n}


def test_top_of_the_ranking_gives_the_full_ranking_figures():
    """Only the top 100 (plus the positives) reach torchmetrics: positives deep in the ranking must still count in
    recall's denominator and nDCG's ideal gain; chunking must not mix queries up."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(23, 300, generator=g)
    relevance = []
    for q in range(23):
        docs = torch.randperm(300, generator=g)[: 1 + q % 3].tolist()
        relevance.append({d: 1 + (i % 2) for i, d in enumerate(docs)})
    got = ranking_metrics(scores, relevance, chunk=5)
    want = _reference(scores, relevance)
    assert got == pytest.approx(want, abs=1e-5)
    assert 0.0 < want["recall@100"] < 1.0  # some positives really are beyond the cut-off


def test_ir_metrics_ranks_by_cosine():
    """Embeddings are compared by cosine: a long vector in the wrong direction must not win on its length."""
    queries = torch.tensor([[1.0, 0.0]])
    corpus = torch.tensor([[10.0, 10.0], [1.0, 0.1]])  # doc 0: larger dot product, doc 1: larger cosine
    assert ir_metrics(queries, corpus, [{1: 1}])["mrr@10"] == pytest.approx(1.0)


def test_a_query_without_a_relevant_document_is_refused():
    with pytest.raises(ValueError, match=r"query 1 has no relevant document"):
        ranking_metrics(torch.zeros(2, 3), [{0: 1}, {2: 0}])


def _set(queries: list[str], corpus: list[str], qrels: list[tuple[int, int]]) -> DatasetDict:
    return DatasetDict(
        queries=Dataset.from_dict({"query_id": [f"q{i}" for i in range(len(queries))], "text": queries}),
        corpus=Dataset.from_dict({"doc_id": [f"d{i}" for i in range(len(corpus))], "text": corpus}),
        qrels=Dataset.from_dict({"query_id": [f"q{q}" for q, _ in qrels], "doc_id": [f"d{d}" for _, d in qrels],
                                 "relevance": [1] * len(qrels)}))


WORDS = ("cat", "dog", "sun", "rain", "car")


def bag_of_words(texts: list[str]) -> torch.Tensor:
    """A stand-in encoder: word counts over WORDS (so a text is nearest to those sharing its words)."""
    return torch.tensor([[float(t.split().count(w)) for w in WORDS] for t in texts]) + 1e-3


def test_evaluate_sets_encodes_a_shared_corpus_once():
    """The English pool of every `xx-en` set is one corpus: encoded once per evaluation, not once per set."""
    english = ["cat cat", "dog", "sun rain"]
    sets = {"de": _set(["dog"], ["car", "dog dog"], [(0, 1)]),
            "de-en": _set(["cat", "rain"], english, [(0, 0), (1, 2)]),
            "fr-en": _set(["sun"], english, [(0, 1)])}  # "sun" is nearest to doc 2, the relevant one is doc 1
    calls = []

    def encode_corpus(texts: list[str]) -> torch.Tensor:
        calls.append(tuple(texts))
        return bag_of_words(texts)

    values = evaluate_sets(bag_of_words, sets, encode_corpus)
    assert sorted(calls) == sorted([("car", "dog dog"), tuple(english)])
    assert values["de"]["mrr@10"] == pytest.approx(1.0) and values["de-en"]["mrr@10"] == pytest.approx(1.0)
    assert values["fr-en"]["mrr@10"] == pytest.approx(0.5)
    keys = flat_keys(values, "val")
    assert keys["val/mrr@10/fr-en"] == pytest.approx(0.5)
    assert keys["val/mrr@10"] == pytest.approx((1 + 1 + 0.5) / 3)  # the selection key: the mean over the sets


def test_callback_logs_per_set_and_mean_keys(monkeypatch):
    """`val/ndcg@10/<set>` per configured set and `val/ndcg@10` (their mean) are logged at validation end, from
    the module's student; nothing runs during the sanity check."""
    sets = {"reqa/xquad/de": _set(["dog"], ["car", "dog dog"], [(0, 1)]),
            "reqa/xquad/de-en": _set(["sun"], ["cat cat", "dog", "sun rain"], [(0, 1)])}
    monkeypatch.setattr(retrieval, "load", lambda name: sets[name])
    logged: dict[str, float] = {}
    encoded: list[tuple[tuple[str, ...], bool]] = []

    def encode(texts: list[str], batch_size: int, document: bool = False) -> torch.Tensor:
        encoded.append((tuple(texts), document))
        return bag_of_words(texts)

    student = types.SimpleNamespace(encode=encode)
    module = types.SimpleNamespace(student=student, log_dict=lambda values, **kw: logged.update(values))
    callback = RetrievalEvaluation(val=list(sets))
    callback.on_validation_epoch_end(types.SimpleNamespace(sanity_checking=True), module)
    assert logged == {}
    callback.on_validation_epoch_end(types.SimpleNamespace(sanity_checking=False), module)
    assert logged["val/mrr@10/de"] == pytest.approx(1.0) and logged["val/mrr@10/de-en"] == pytest.approx(0.5)
    assert logged["val/mrr@10"] == pytest.approx(0.75)
    assert set(logged) == {f"val/{m}{s}" for m in ir_eval.METRICS for s in ("", "/de", "/de-en")}
    # corpora as documents (the student's document prefix), questions as queries
    assert sorted(encoded) == sorted([(("car", "dog dog"), True), (("cat cat", "dog", "sun rain"), True),
                                      (("dog",), False), (("sun",), False)])


def test_callback_refuses_an_unknown_set_at_construction():
    with pytest.raises(ValueError, match=r"unknown set\(s\) reqa/xquad/xx"):
        RetrievalEvaluation(val=["reqa/xquad/xx"])


def test_sample_queries_keeps_each_kept_querys_qrels_and_relevant_documents():
    """A seeded sample: the kept queries' qrels only, every relevant document kept when the corpus is cut, the
    same sample on every call; None keeps the set whole."""
    rows = _set([f"query {i}" for i in range(10)], [f"doc {i}" for i in range(50)], [(i, 5 * i) for i in range(10)])
    sample = retrieval.sample_queries(rows, 4, max_docs=12)
    kept = set(sample["queries"]["query_id"])
    assert len(kept) == 4 and set(sample["qrels"]["query_id"]) == kept
    assert {f"d{5 * int(q[1:])}" for q in kept} <= set(sample["corpus"]["doc_id"]) and len(sample["corpus"]) == 12
    assert retrieval.sample_queries(rows, 4, max_docs=12)["queries"]["query_id"] == sample["queries"]["query_id"]
    assert len(retrieval.sample_queries(rows, None)["corpus"]) == 50
    retrieval.check_retrieval_set(sample, "sample")  # still a valid set: every query has a relevant document


def test_reranked_matrix_orders_the_top_by_the_new_scores_above_the_rest():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    out = ir_eval.reranked_matrix(scores, torch.tensor([[3, 1]]), torch.tensor([[-50.0, 2.0]]))
    assert out.argsort(dim=1, descending=True)[0, :2].tolist() == [1, 3]  # a logit of -50 still beats the rest
    assert (out[0, [0, 2, 4]] == -1e4).all()


def test_fused_scores_by_hand_and_blind_to_each_rankers_scale():
    first, second = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])
    # standardised (population std sqrt(2/3)): first -> [-a, 0, a], second -> [a, 0, -a], a = sqrt(3/2);
    # 0.25 x second + 0.75 x first = [-a/2, 0, a/2]
    half = math.sqrt(1.5) / 2
    assert torch.allclose(ir_eval.fused_scores(first, second, 0.25), torch.tensor([[-half, 0.0, half]]))
    # a raw weighted sum would let the logits' scale decide
    assert torch.allclose(ir_eval.fused_scores(first, 100 * second, 0.25), torch.tensor([[-half, 0.0, half]]))
    # a query with one candidate: finite, not the NaN a sample std gives
    assert torch.isfinite(ir_eval.fused_scores(first[:, :1], second[:, :1], 0.25)).all()


def test_cross_fitted_fusion_measures_each_half_with_the_weight_the_other_half_chose():
    # 4 queries, 3 candidates each, document 0 relevant: the second ranker is right on even queries, the first on
    # odd ones, so each half chooses the weight that is wrong for the other half
    right, wrong = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 2.0])
    first = torch.stack([wrong, right, wrong, right])
    second = torch.stack([right, wrong, right, wrong])
    top = torch.tensor([[0, 1, 2]] * 4)
    relevance = [{0: 1.0}] * 4
    chosen, matrix = ir_eval.cross_fitted_fusion(first.clone(), top, first, second, relevance, [0.0, 1.0])
    assert chosen == [1.0, 0.0]
    # every query ranked by the wrong ranker: its relevant document last of three (1.0 if a half chose for itself)
    assert ir_eval.ranking_metrics(matrix, relevance)["mrr@10"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least 2 queries"):
        ir_eval.cross_fitted_fusion(first[:1], top[:1], first[:1], second[:1], relevance[:1], [0.0, 1.0])
