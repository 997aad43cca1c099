"""What `distill bench` serves, and how accurately: the two regimes as tasks, and Tatoeba bitext retrieval.

`unique-pairs`: every pair is new, both texts are encoded, then scored; requests arrive in chunks of pairs, and
the accuracy is the STS Spearman against the gold labels. `one-vs-n`: one query against N pre-encoded candidates
(the candidates' encoding is a one-off cost, reported apart); the accuracy is recall@10 of the teacher's top 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from distill import names
from distill.bench.floor import forward_flops
from distill.bench.runners import BenchError, Runner
from distill.bench.timing import Timings, timed
from distill.evaluation import bitext_retrieval
from distill.languages import iso

UNIQUE_PAIRS, ONE_VS_N = "unique-pairs", "one-vs-n"
REGIMES = (UNIQUE_PAIRS, ONE_VS_N)
TOP_K = 10


# ---------------------------------------------------------------- the inputs


def read_inputs(source: str, label_range: tuple[float, float] | None, max_pairs: int | None, queries: int,
                pool_size: int) -> dict[str, Any]:
    """The pairs (`a`, `b`, `gold`) and, for one-vs-n, `queries` and a candidate `pool` of `pool_size` texts."""
    from distill import data

    rows, _ = data.read_pairs(source, label_range=label_range)
    n = min(max_pairs or len(rows), len(rows))
    inputs: dict[str, Any] = {"source": source, "a": rows["text_a"][:n], "b": rows["text_b"][:n],
                              "gold": rows["label"][:n] if "label" in rows.column_names else None}
    if pool_size:
        qs = list(dict.fromkeys(rows["text_a"]))[:queries]
        taken = set(qs)
        pool = [t for t in dict.fromkeys([*rows["text_b"], *rows["text_a"]]) if t not in taken][:pool_size]
        from_pairs = len(pool)
        if len(pool) < pool_size:
            pool = _fill_from_tatoeba(pool, pool_size, seen=set(pool) | taken)
        inputs.update(queries=qs, pool=pool,
                      pool_source=f"{from_pairs} distinct sentences of {source} (queries excluded)"
                                  + (f", then {len(pool) - from_pairs} English sentences of the Tatoeba test sets "
                                     f"(catalog `tatoeba/<code>`)" if len(pool) > from_pairs else ""))
        if len(pool) < pool_size:
            raise BenchError(f"n_candidates asks for {pool_size} candidates; only {len(pool)} sentences exist")
    return inputs


def _fill_from_tatoeba(pool: list[str], size: int, seen: set[str]) -> list[str]:
    """Larger pools: the English sides of the Tatoeba test sets (catalog), in code order, never a text twice."""
    from distill.catalog import read_tatoeba
    from distill.languages import TATOEBA_CODES

    pool = list(pool)
    for code in TATOEBA_CODES:
        for line in read_tatoeba(code)[1]:
            if line and line not in seen:
                seen.add(line)
                pool.append(line)
        if len(pool) >= size:
            break
    return pool[:size]


# ---------------------------------------------------------------- the regimes


@dataclass
class PairsTask:
    """`unique-pairs`: one runner in one scoring mode serves all pairs, chunk by chunk, in every repeat."""

    runner: Runner
    mode: str
    inputs: dict[str, Any]
    chunks: list[slice]
    regime: str = field(default=UNIQUE_PAIRS, init=False)
    n: int | None = field(default=None, init=False)  # unique pairs have no candidate pool
    scores: list[float] = field(default_factory=list, init=False)  # kept from the first repeat, for accuracy
    timings: Timings = field(default_factory=Timings, init=False)

    def serve(self, sl: slice, keep: bool) -> None:
        a, b = self.inputs["a"][sl], self.inputs["b"][sl]
        if self.runner.predict is not None:
            s = self.runner.predict(list(zip(a, b)))
        else:
            s = self.runner.score(self.runner.encode(a), self.runner.encode(b), self.mode).float().numpy()
        if keep:
            self.scores.extend(np.asarray(s).tolist())

    def work(self, repeat: int) -> list[float]:
        return [timed(self.serve, sl, repeat == 0)[1] for sl in self.chunks]

    def warm_up(self) -> None:
        self.serve(self.chunks[0], keep=False)

    def units(self, repeat: int) -> int:
        return len(self.inputs["a"])

    def accuracy(self) -> list[tuple[str, str, float | None]]:
        gold = self.inputs["gold"]
        return [(self.mode, "spearman", spearmanr(self.scores, gold).statistic if gold is not None else None)]

    def extra(self) -> dict[str, Any]:
        return {"latency_unit": f"chunk of {self.chunks[0].stop} pairs"}


@dataclass
class OneVsNTask:
    """`one-vs-n`: one runner in one scoring mode answers each query's top 10 among the first N candidates.

    The teacher scores each query once over all repeats (query i in repeat i % repeats): at N = 1000 one query is
    1000 cross-encoder passes; a student serves every query in every repeat. The reference (the first teacher
    runner) fills `teacher_top`, (N, query) -> the teacher's top 10, which every task's recall is measured against.
    """

    runner: Runner
    mode: str
    inputs: dict[str, Any]
    n: int
    repeats: int
    teacher_top: dict[tuple[int, int], set[int]]
    is_reference: bool
    teacher_queries: int | None = None  # a teacher serves only the first ones (each is N cross-encoder passes)
    regime: str = field(default=ONE_VS_N, init=False)
    top: dict[int, set[int]] = field(default_factory=dict, init=False)  # query -> this task's top k
    candidate_encode_s: float | None = field(default=None, init=False)
    timings: Timings = field(default_factory=Timings, init=False)

    def queries(self, repeat: int) -> list[int]:
        """The queries served in a repeat."""
        n_queries = len(self.inputs["queries"])
        if self.runner.predict is not None:
            n_queries = min(self.teacher_queries or n_queries, n_queries)
            return [i for i in range(n_queries) if i % self.repeats == repeat]
        return list(range(n_queries))

    def candidates(self) -> torch.Tensor:
        """The first N candidates' embeddings, encoded once per runner and N (shared by its scoring modes); unit
        length for cosine, so a query is scored by one matrix-vector product."""
        if self.n not in self.runner.candidates:
            embeddings, seconds = timed(self.runner.encode, self.inputs["pool"][:self.n])
            if not self.runner.normalized:
                embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
            self.runner.candidates[self.n] = (embeddings.float().contiguous(), round(seconds, 4))
        self.candidate_encode_s = self.runner.candidates[self.n][1]
        return self.runner.candidates[self.n][0]

    def answer(self, i: int) -> set[int]:
        q = self.inputs["queries"][i]
        if self.runner.predict is not None:
            s = torch.as_tensor(self.runner.predict([(q, c) for c in self.inputs["pool"][:self.n]]))
        elif self.mode == names.DSE:
            s = self.runner.score(self._query(q)[None], self.candidates(), self.mode)
        else:  # one query, one matrix-vector product (a student's DSE head is not run for cosine)
            u = self._query(q)
            s = self.candidates() @ (u if self.runner.normalized else torch.nn.functional.normalize(u, dim=-1))
        return set(torch.topk(s, min(TOP_K, self.n)).indices.tolist())

    def _query(self, text: str) -> torch.Tensor:
        return self.runner.query(text) if self.runner.query is not None else self.runner.encode([text])[0]

    def work(self, repeat: int) -> list[float]:
        latencies = []
        for i in self.queries(repeat):
            top, seconds = timed(self.answer, i)
            latencies.append(seconds)
            self.top[i] = top
            if self.is_reference:
                self.teacher_top[(self.n, i)] = top
        return latencies

    def warm_up(self) -> None:
        if self.runner.predict is None:
            self.candidates()
            self.answer(0)
        else:
            self.runner.predict([(self.inputs["queries"][0], c) for c in self.inputs["pool"][:8]])

    def units(self, repeat: int) -> int:
        return len(self.queries(repeat))

    def accuracy(self) -> list[tuple[str, str, float | None]]:
        k = min(TOP_K, self.n)
        hits = [len(top & self.teacher_top[(self.n, i)]) / k for i, top in self.top.items()
                if (self.n, i) in self.teacher_top]
        return [(self.mode, "recall@10_vs_teacher", float(np.mean(hits)) if hits else None)]

    def extra(self) -> dict[str, Any]:
        out = {} if self.candidate_encode_s is None else {"candidate_encode_s": self.candidate_encode_s}
        return out | self.work_per_query()

    def work_per_query(self) -> dict[str, Any]:
        """The median query's tokens and forward-pass GFLOP (the teacher: its N pairs), for the floor."""
        r, queries = self.runner, self.inputs["queries"]
        if r.encoder_config is None or r.count_tokens is None:
            return {}
        if r.predict is None:
            tokens = sorted(r.count_tokens(q) for q in queries)[len(queries) // 2]
            return {"query_tokens": tokens, "query_gflop": round(forward_flops(r.encoder_config, tokens) / 1e9, 4)}
        pool = self.inputs["pool"][:self.n]
        flops = sorted(sum(forward_flops(r.encoder_config, r.count_tokens(q, c)) for c in pool)
                       for q in queries[:3])  # the teacher's cost hardly varies with the query: three suffice
        return {"query_gflop": round(flops[len(flops) // 2] / 1e9, 3)}


Task = PairsTask | OneVsNTask


def build_tasks(runners: list[Runner], regimes: list[str], ns: list[int], inputs: dict[str, Any], chunk: int,
                teacher_max_n: int, repeats: int, teacher_queries: int | None = None) -> list[Task]:
    """Every (runner, scoring mode, regime, N) to time; above `teacher_max_n` the teacher is not run (its rows
    are extrapolated afterwards, `report.extrapolated_rows`), the teacher baseline only on unique pairs, and the
    peers only on one query against the largest N (what a user picking a model compares)."""
    tasks: list[Task] = []
    if UNIQUE_PAIRS in regimes:
        chunks = [slice(i, i + chunk) for i in range(0, len(inputs["a"]), chunk)]
        tasks += [PairsTask(runner, mode, inputs, chunks) for runner in runners if runner.role != "peer"
                  for mode in runner.scoring_modes()]
    if ONE_VS_N in regimes:
        teacher_top: dict[tuple[int, int], set[int]] = {}
        reference = next((r for r in runners if r.role == "teacher"), None)
        for n in ns:
            for runner in runners:
                if runner.role == "st-teacher" or (runner.predict is not None and n > teacher_max_n) or (
                        runner.role == "peer" and n != max(ns)):
                    continue
                tasks += [OneVsNTask(runner, mode, inputs, n, repeats, teacher_top, runner is reference,
                                     teacher_queries) for mode in runner.scoring_modes()]
    return tasks


def measured_rows(task: Task) -> list[dict[str, Any]]:
    """The report rows of a timed task: one per (mode, metric), in the schema of DESIGN.md."""
    r, figures = task.runner, task.timings.figures()
    return [{"role": r.role, "model": r.model, "backend": r.backend, "mode": mode, "regime": task.regime,
             "n_candidates": task.n, "throughput": figures["throughput"], "p50_ms": figures["p50_ms"],
             "p95_ms": figures["p95_ms"], "peak_rss_mb": round(r.load_mb + task.timings.peak_mb, 1),
             "size_mb": r.size_mb, "metric": metric, "value": None if value is None else round(float(value), 4),
             "spread": figures["spread"], "samples": figures["samples"], **task.extra()}
            for mode, metric, value in task.accuracy()]


# ---------------------------------------------------------------- accuracy extras


def tatoeba_rows(runners: list[Runner], langs: list[str]) -> list[dict[str, Any]]:
    """Bitext retrieval (accuracy@1 and nDCG@10, one relevant sentence) for each student runner."""
    from distill.catalog import CatalogError, read_tatoeba, tatoeba_code

    out = []
    for lang in langs:
        try:
            xx, en = read_tatoeba(lang)
        except CatalogError as err:
            raise BenchError(str(err)) from None
        code = iso(tatoeba_code(lang))  # ISO 639-1 in keys and reports, as `distill test` logs them (DESIGN.md)
        for runner in runners:
            if runner.encode is None or runner.role != "student":
                continue
            ex, ee = runner.encode(xx), runner.encode(en)
            for direction, q, c in ((f"{code}-en", ex, ee), (f"en-{code}", ee, ex)):
                out.append({"model": runner.model, "backend": runner.backend, "direction": direction, "n": len(c),
                            **{k: round(v, 4) for k, v in bitext_retrieval(q, c, TOP_K).items()}})
    return out
