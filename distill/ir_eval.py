"""Retrieval evaluation: nDCG@10, MRR@10 and recall@100 of a bi-encoder on named retrieval sets (torchmetrics).

`ranking_metrics` is the pure function (scores and relevance in, three numbers out), `ir_metrics` runs it on
embeddings (cosine), `evaluate_sets` on named sets (`distill.retrieval.load`) with each distinct corpus encoded
once, and `RetrievalEvaluation` is the Lightning callback that logs `{split}/ndcg@10/<set>`, `{split}/mrr@10/<set>`,
`{split}/recall@100/<set>` (DESIGN.md keys: `<set>` is `de`, `de-en`, `squad`, `scifact`) and their means over
the split's sets as `{split}/ndcg@10` etc.: `val/ndcg@10` is the selection key.

Rerankers: `reranked_matrix` turns a reranker's order of a retriever's top candidates into a score matrix for
`ranking_metrics`; `fused_scores` mixes two rankers' standardised scores of the same candidates, and
`cross_fitted_fusion` chooses their mix on one half of the queries and measures it on the other.

Ties: nDCG averages the gain over every order of tied documents (torchmetrics, as scikit-learn does); MRR and
recall rank the non-relevant documents of a tie first (ties count against the model), so a collapsed student that
gives every document one score scores near zero instead of whatever order `topk` happens to return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from datasets import DatasetDict
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

NDCG_AT, MRR_AT, RECALL_AT = 10, 10, 100
METRICS = (f"ndcg@{NDCG_AT}", f"mrr@{MRR_AT}", f"recall@{RECALL_AT}")

Encode = Callable[[list[str]], Tensor]


def _rank_scores(scores: Tensor, relevant: Tensor) -> Tensor:
    """Positive, strictly decreasing stand-ins for `scores` (one row's candidates): sorted by score, a relevant
    document after the non-relevant ones it ties with.

    torchmetrics' MRR and recall also count a relevant document as non-relevant when its score is <= 0 (1.9:
    `target = where(preds > 0, target, 0)`), which is every cosine below zero: ranks side-step that too.
    """
    order = torch.argsort((relevant > 0).to(torch.int8), stable=True)  # non-relevant first ...
    order = order[torch.argsort(-scores[order], stable=True)]  # ... within each run of equal scores
    out = torch.empty(len(scores), dtype=torch.float64)
    out[order] = torch.arange(len(scores), 0, -1, dtype=torch.float64)
    return out


def ranking_metrics(scores: Tensor, relevance: Sequence[Mapping[int, float]], chunk: int = 256) -> dict[str, float]:
    """nDCG@10, MRR@10 and recall@100 of ranking each query's documents by score, averaged over queries.

    Only what the cut-offs can see is handed to torchmetrics: per query, every document scoring at least its
    100th-best score (ties at the boundary included) plus its relevant documents, so the figures are those of
    the full ranking at a fraction of the memory.

    Args:
        scores: (n_queries, n_docs) similarity of each query to each document; higher ranks first.
        relevance: per query, document index -> relevance (> 0: relevant; nDCG uses it as the gain).
        chunk: queries per step.

    Raises:
        ValueError: a query without a relevant document, or a shape that does not match `relevance`.
    """
    n_queries, n_docs = scores.shape
    if len(relevance) != n_queries:
        raise ValueError(f"scores have {n_queries} rows but relevance lists {len(relevance)} queries")
    empty = next((q for q, rel in enumerate(relevance) if not any(r > 0 for r in rel.values())), None)
    if empty is not None:
        raise ValueError(f"query {empty} has no relevant document; every query needs one "
                         f"(distill.retrieval.check_retrieval_set names it)")
    ndcg = RetrievalNormalizedDCG(top_k=NDCG_AT, empty_target_action="error")
    mrr = RetrievalMRR(top_k=MRR_AT, empty_target_action="error")
    recall = RetrievalRecall(top_k=RECALL_AT, empty_target_action="error")
    depth = min(max(NDCG_AT, MRR_AT, RECALL_AT), n_docs)
    for start in range(0, n_queries, chunk):
        block = scores[start:start + chunk].double()  # (chunk, n_docs)
        cut = block.topk(depth, dim=1).values[:, -1:]  # (chunk, 1): the deepest cut-off's score
        for row, q in enumerate(range(start, start + len(block))):
            rel = relevance[q]
            keep = (block[row] >= cut[row]).nonzero().view(-1).tolist()
            keep = sorted(set(keep) | {d for d, r in rel.items() if r > 0})
            picked = torch.tensor(keep, dtype=torch.long)
            target = torch.tensor([rel.get(d, 0) for d in keep])  # (n_kept,) int or float gains
            preds = block[row, picked]
            # nDCG: gains as given (graded), ties averaged; the scores shifted > 0 like the ranks below
            indexes = torch.full((len(keep),), q, dtype=torch.long)
            ndcg.update(preds - preds.min() + 1.0, target, indexes)
            ranks = _rank_scores(preds, target)
            mrr.update(ranks, target > 0, indexes)
            recall.update(ranks, target > 0, indexes)
    return {METRICS[0]: float(ndcg.compute()), METRICS[1]: float(mrr.compute()), METRICS[2]: float(recall.compute())}


def ir_metrics(query_emb: Tensor, corpus_emb: Tensor, relevance: Sequence[Mapping[int, float]],
               chunk: int = 256) -> dict[str, float]:
    """`ranking_metrics` of cosine similarity between query and corpus embeddings.

    Args:
        query_emb: (n_queries, dim).
        corpus_emb: (n_docs, dim).
        relevance: per query, corpus row -> relevance.
        chunk: queries per step.
    """
    q = torch.nn.functional.normalize(query_emb.float(), dim=-1)
    c = torch.nn.functional.normalize(corpus_emb.float(), dim=-1)
    return ranking_metrics(q @ c.T, relevance, chunk)  # (n_queries, n_docs)


def reranked_matrix(scores: Tensor, top: Tensor, new: Tensor) -> Tensor:
    """A score matrix that ranks each query's candidates `top` (n_queries, depth) by `new` (same shape), all of
    them above the query's other documents: a reranker's order of a retriever's top `depth`, ready for
    `ranking_metrics`."""
    out = torch.full_like(scores, -1e4)
    out.scatter_(1, top, new - new.min() + 10.0)
    return out


def fused_scores(first: Tensor, second: Tensor, weight: float) -> Tensor:
    """Two rankers' scores of the same candidates (n_queries, depth) in one: per query, `weight` x `second`'s
    standardised scores + (1 - weight) x `first`'s (a cross-encoder's logits and a cosine live on different
    scales, so raw scores cannot be added)."""
    def z(x: Tensor) -> Tensor:
        # the population std: one candidate (std 0) gives 0, not the NaN of the sample std
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, correction=0).clamp_min(1e-6)

    return weight * z(second.float()) + (1 - weight) * z(first.float())


def cross_fitted_fusion(scores: Tensor, top: Tensor, first: Tensor, second: Tensor,
                        relevance: Sequence[Mapping[int, float]], weights: Sequence[float]
                        ) -> tuple[list[float], Tensor]:
    """`fused_scores` with its weight chosen on the other half of the queries (even rows choose for odd ones and
    the reverse), so that the choice cannot inflate the figure measured with it.

    Returns:
        the weight each half chose (even rows', odd rows') and the reranked score matrix (`reranked_matrix`).
    """
    halves = [list(range(0, len(relevance), 2)), list(range(1, len(relevance), 2))]
    if not all(halves):
        raise ValueError(f"cross-fitting needs at least 2 queries; got {len(relevance)}")

    def ndcg(weight: float, rows: list[int]) -> float:
        fused = reranked_matrix(scores[rows], top[rows], fused_scores(first[rows], second[rows], weight))
        return ranking_metrics(fused, [relevance[i] for i in rows])[METRICS[0]]

    chosen = [max(weights, key=lambda w: ndcg(w, half)) for half in halves]
    fused = torch.empty_like(first, dtype=torch.float32)
    for weight, other in zip(chosen, reversed(halves)):
        fused[other] = fused_scores(first[other], second[other], weight)
    return chosen, reranked_matrix(scores, top, fused)


def relevance_of(rows: DatasetDict) -> list[dict[int, float]]:
    """Per query (in `rows["queries"]` order): corpus row -> relevance, from the qrels."""
    position = {d: i for i, d in enumerate(rows["corpus"]["doc_id"])}
    query_row = {q: i for i, q in enumerate(rows["queries"]["query_id"])}
    out: list[dict[int, float]] = [{} for _ in query_row]
    for q, d, r in zip(rows["qrels"]["query_id"], rows["qrels"]["doc_id"], rows["qrels"]["relevance"]):
        out[query_row[q]][position[d]] = float(r)
    return out


def _corpus_key(texts: list[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8") + b"\x1f")
    return h.hexdigest()


def evaluate_sets(encode: Encode, sets: Mapping[str, DatasetDict], encode_corpus: Encode | None = None
                  ) -> dict[str, dict[str, float]]:
    """The three metrics of every named set; a corpus several sets share (the English pool of every `xx-en`
    set) is encoded once.

    Args:
        encode: texts -> (n, dim) embeddings of the queries.
        sets: name -> retrieval rows (`queries`, `corpus`, `qrels`), validated (`distill.retrieval`).
        encode_corpus: texts -> embeddings of the documents, where they are encoded differently (e.g. another
            prefix); default `encode`.
    """
    encode_corpus = encode_corpus or encode
    corpora: dict[str, Tensor] = {}
    out = {}
    for name, rows in sets.items():
        texts = list(rows["corpus"]["text"])
        key = _corpus_key(texts)
        if key not in corpora:
            corpora[key] = encode_corpus(texts)
        out[name] = ir_metrics(encode(list(rows["queries"]["text"])), corpora[key], relevance_of(rows))
    return out


def flat_keys(values: Mapping[str, Mapping[str, float]], split: str) -> dict[str, float]:
    """`{split}/{metric}/{set}` for every set, plus `{split}/{metric}`: the mean over the sets (the selection key
    on `val`)."""
    out = {f"{split}/{metric}/{name}": v[metric] for name, v in values.items() for metric in METRICS}
    if values:
        out |= {f"{split}/{metric}": sum(v[metric] for v in values.values()) / len(values) for metric in METRICS}
    return out


class RetrievalEvaluation(Callback):
    """Retrieval metrics of the student at the end of each validation and test epoch (module docstring).

    Every process evaluates the whole sets, so every process logs the same values and `ModelCheckpoint` can
    monitor `val/ndcg@10` under DDP without a collective call. The sanity check is skipped (it would encode every
    corpus before the first step).

    Args:
        val: retrieval set names (`distill.retrieval.SETS`, e.g. `reqa/squad/dev`) evaluated on validation; their
            mean nDCG@10 is `val/ndcg@10`.
        test: set names evaluated on test (e.g. `reqa/xquad/de`, `reqa/xquad/de-en`, `scifact/test`).
        batch_size: texts per forward pass while encoding.
        max_queries: evaluate a seeded sample of this many queries per set (smoke runs; the corpus stays whole).
    """

    def __init__(self, val: list[str] | None = None, test: list[str] | None = None, batch_size: int = 64,
                 max_queries: int | None = None) -> None:
        from distill import retrieval

        unknown = [n for n in [*(val or []), *(test or [])] if n not in retrieval.SETS]
        if unknown:  # at start-up, not after the first epoch
            raise ValueError(f"RetrievalEvaluation: unknown set(s) {', '.join(unknown)}; known: "
                             f"{', '.join(retrieval.SETS)}")
        self.names = {"val": list(val or []), "test": list(test or [])}
        self.batch_size, self.max_queries = batch_size, max_queries

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        from distill import retrieval

        if not self.names[split] or trainer.sanity_checking:
            return
        student = getattr(pl_module, "student", pl_module)
        sets = {retrieval.metric_suffix(n): retrieval.sample_queries(retrieval.load(n), self.max_queries)
                for n in self.names[split]}
        values = evaluate_sets(lambda texts: student.encode(texts, batch_size=self.batch_size), sets,
                               lambda texts: student.encode(texts, batch_size=self.batch_size, document=True))
        pl_module.log_dict(flat_keys(values, split), sync_dist=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
