"""`distill mine`: silver pairs and hard negatives from a sentence pool, found with the current student.

Pairs mode (AugSBERT, Thakur et al., NAACL 2021, arXiv:2010.08240): each sentence of the pool is an anchor;
its `top_k` nearest neighbours (the pairs a teacher is most informative on) plus `n_spread` partners sampled
across the similarity range (so the silver set is not all near-duplicates) become pairs with no label.
Groups mode: each (query, positive) pair of `positives` gets `n_negatives` pool sentences: by default the ones the
student finds most similar to the query (after `skip_top`, which guards against unlabelled true positives);
`negatives=window` samples them from the student's ranks `skip_top`..`window_end` instead, `negatives=random` from
the whole pool. With `false_negative_margin`, a candidate the teacher scores above that share of the positive's
score is dropped first (NV-Retriever's relative margin, Moreira et al., 2024, arXiv:2407.15831: 0.95 drops a
negative scored > 0.95 x the positive); the teacher's scores come from score caches or from the teacher itself.

Either way the output is a pair file (`pair_id, text_a, text_b`, plus `similarity` and, for groups, `group`)
that `distill cache` scores with the teacher and `PairDataModule` / `GroupDataModule` train on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import Tensor

from distill import catalog
from distill.checkpoints import check_fits, read_checkpoint
from distill.data import FORMATS, DataError, make_pair_id, normalise, read_pairs
from students import BiEncoder


def load_student_weights(student: BiEncoder, ckpt_path: str) -> None:
    """Load the `student.*` weights of a DistillModule checkpoint (a wrong file is a one-line error)."""
    state = read_checkpoint(ckpt_path)["state_dict"]
    own = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    check_fits(student, own, ckpt_path)
    student.load_state_dict(own)


def pool_texts(sources: list[str]) -> list[str]:
    """Unique texts (both sides of every pair, first occurrence kept) of pair files or catalog sets (`stsb/train`)."""
    seen: dict[str, str] = {}
    for source in sources:
        if catalog.is_name(source):  # a catalog set (pairs or parallel text): both sides
            try:
                texts = catalog.texts(source)
            except catalog.CatalogError as err:
                raise DataError(str(err)) from None
        else:
            pairs, _ = read_pairs(source, label_column=None)
            texts = [*pairs["text_a"], *pairs["text_b"]]
        for text in texts:
            seen.setdefault(normalise(text), text)
    return list(seen.values())


def top_k(emb: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Exact inner-product search of every row against all others (itself excluded): (N, k) scores and indices.

    faiss (IndexFlatIP, also exact) when it is installed; torch matmuls in chunks otherwise (fine to ~10^5).
    """
    n = emb.shape[0]
    k = min(k, n - 1)
    try:
        import faiss  # optional: `pip install faiss-cpu`
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb.numpy())
        scores, idx = index.search(emb.numpy(), k + 1)
        scores, idx = torch.from_numpy(scores), torch.from_numpy(idx)
        keep = idx != torch.arange(n).unsqueeze(1)  # drop self, wherever ties put it
        return (torch.stack([s[m][:k] for s, m in zip(scores, keep)]),
                torch.stack([i[m][:k] for i, m in zip(idx, keep)]))
    out_s, out_i = [], []
    for start in range(0, n, chunk):
        sims = emb[start:start + chunk] @ emb.T  # (chunk, N)
        rows = torch.arange(start, min(start + chunk, n))
        sims[rows - start, rows] = float("-inf")
        s, i = sims.topk(k, dim=1)
        out_s.append(s)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


def spread(emb: Tensor, n_spread: int, rng: random.Random, candidates: int = 8) -> list[list[tuple[int, float]]]:
    """For each row, `n_spread` partners spread over the similarity range: draw `candidates * n_spread` random
    others, sort them by similarity and take one at random from each of `n_spread` equal strata."""
    n = emb.shape[0]
    m = min(candidates * n_spread, n - 1)
    out = []
    for i in range(n):
        others = rng.sample(range(n - 1), m)
        others = [j + (j >= i) for j in others]  # skip i itself
        sims = (emb[others] @ emb[i]).tolist()
        ranked = sorted(zip(others, sims), key=lambda x: x[1])
        strata = [ranked[j * m // n_spread:(j + 1) * m // n_spread] for j in range(n_spread)]
        out.append([rng.choice(s) for s in strata if s])
    return out


def write_pairs(frame: pd.DataFrame, out: str) -> Path:
    path = Path(out)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"--out {out}: unknown file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        frame.to_parquet(tmp, index=False)
    elif fmt == "jsonl":
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(tmp, sep="\t" if fmt == "tsv" else ",", index=False)
    tmp.replace(path)  # atomic: a killed run leaves no half-written pair file for `distill cache` to read
    return path


def main(
    student: BiEncoder,
    sentences: list[str],
    out: str,
    ckpt_path: str | None = None,
    mode: Literal["pairs", "groups"] = "pairs",
    top_k_neighbours: int = 3,
    n_spread: int = 1,
    positives: str | None = None,
    min_gold: float | None = None,
    n_negatives: int = 3,
    skip_top: int = 0,
    exclude: list[str] | None = None,
    max_pairs: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    negatives: Literal["hardest", "window", "random"] = "hardest",
    window_end: int | None = None,
    false_negative_margin: float | None = None,
    teacher_cache: list[str] | None = None,
    teacher: pl.LightningModule | None = None,
    teacher_ckpt: str | None = None,
) -> Path:
    """Mine silver pairs or hard negatives from a sentence pool with the student, for the teacher to score.

    Args:
        student: the student that encodes the pool, configured by class_path as in its fit config.
        sentences: the pool: pair files or catalog sets (both text columns; training data only, never dev or
            test sentences).
        out: the pair file to write (.parquet, .csv, .tsv or .jsonl); then `distill cache --data.init_args.train`.
        ckpt_path: a `distill fit` checkpoint of the student (default: the configured backbone as it is).
        mode: `pairs` (silver pairs, AugSBERT) or `groups` (query, positive, hardest negatives).
        top_k_neighbours: pairs mode: nearest neighbours per anchor.
        n_spread: pairs mode: extra partners per anchor sampled across the similarity range.
        positives: groups mode: a pair file (or catalog set) of (query, positive) pairs.
        min_gold: groups mode: keep only positives whose gold label (mapped to [0, 1]) is at least this.
        n_negatives: groups mode: hard negatives per query.
        skip_top: groups mode: skip this many nearest sentences before taking negatives.
        exclude: pair files whose pairs (either order) must not be written again (e.g. the gold training pairs).
        max_pairs: pairs mode: keep a seeded random subset of this many pairs.
        batch_size: texts per forward pass while encoding.
        seed: seed of the sampling.
        negatives: groups mode: `hardest` (the nearest after skip_top), `window` (a seeded random n_negatives of
            the student's ranks skip_top..window_end) or `random` (a seeded random n_negatives of the whole pool).
        window_end: groups mode: the rank (exclusive) negatives may come from at the deepest; needed by
            `window`, and by `hardest` with false_negative_margin (it bounds what the teacher scores).
        false_negative_margin: groups mode: drop a candidate whose teacher score exceeds this share of the
            positive's (e.g. 0.95), before negatives are taken; the count dropped is printed.
        teacher_cache: score caches holding the teacher's score of every (query, positive) and (query, candidate)
            pair: `distill cache` of an earlier `distill mine` output with n_negatives >= window_end.
        teacher: or the teacher itself (class_path as in its fit config), scoring the candidates here.
        teacher_ckpt: its `distill fit` checkpoint (a `teachers.FolderCrossEncoder` needs none).
    """
    _check_options(mode, positives, top_k_neighbours=top_k_neighbours, n_spread=n_spread, n_negatives=n_negatives,
                   skip_top=skip_top, batch_size=batch_size)
    _check_negative_options(negatives, n_negatives, skip_top, window_end, false_negative_margin, teacher_cache,
                            teacher, teacher_ckpt)
    if ckpt_path:
        load_student_weights(student, ckpt_path)
    texts = pool_texts(sentences)
    if len(texts) < 2:
        raise DataError(f"the pool {sentences} has {len(texts)} distinct sentence(s); mining needs at least 2")
    rng = random.Random(seed)
    # groups rank candidates (documents) for queries: with a document prefix (e5's "passage: ") the pool is encoded
    # as documents and the queries apart, as the student will be served
    asymmetric = mode == "groups" and _prefix(student, True) != _prefix(student, False)
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(student.encode(texts, batch_size=batch_size, document=asymmetric), dim=-1)

    def encode_queries(queries: list[str]) -> Tensor:
        with torch.inference_mode():
            return torch.nn.functional.normalize(student.encode(queries, batch_size=batch_size), dim=-1)

    excluded = _pair_set(exclude or [])
    if mode == "pairs":
        frame = _silver_pairs(texts, emb, top_k_neighbours, n_spread, excluded, rng)
        if max_pairs is not None and len(frame) > max_pairs:
            frame = frame.iloc[sorted(rng.sample(range(len(frame)), max_pairs))]
    else:
        scorer = None
        if false_negative_margin is not None:
            scorer = TeacherScores(teacher_cache, teacher, teacher_ckpt, batch_size)
        frame = _groups(texts, emb, positives, min_gold, n_negatives, skip_top, excluded,  # type: ignore[arg-type]
                        Window(negatives, window_end, false_negative_margin, scorer, rng),
                        encode_queries, asymmetric)
    path = write_pairs(frame.reset_index(drop=True), out)
    print(f"mine: {len(frame)} {'pairs' if mode == 'pairs' else 'rows in groups'} from {len(texts)} sentences "
          f"-> {path}")
    return path


def _prefix(student: torch.nn.Module, document: bool) -> str:
    return student.prefix_of(document) if hasattr(student, "prefix_of") else student.config.get("prefix", "")


def _check_options(mode: str, positives: str | None, **counts: int) -> None:
    """One error naming every option out of range."""
    lows = {"n_negatives": 1, "batch_size": 1}
    problems = [f"{name}={value} (expected >= {lows.get(name, 0)})" for name, value in counts.items()
                if value < lows.get(name, 0)]
    if mode == "groups" and positives is None:
        problems.append("mode=groups needs --positives, a pair file of (query, positive) pairs")
    if mode == "pairs" and counts["top_k_neighbours"] + counts["n_spread"] == 0:
        problems.append("top_k_neighbours + n_spread is 0: nothing to mine")
    if problems:
        raise ValueError(f"distill mine: {'; '.join(problems)}")


def _pair_set(sources: list[str]) -> set[frozenset]:
    """The pairs of these files, either order, normalised: never to be written again."""
    pairs: set[frozenset] = set()
    for source in sources:
        rows, _ = read_pairs(source, label_column=None)
        pairs |= {frozenset((normalise(a), normalise(b))) for a, b in zip(rows["text_a"], rows["text_b"])}
    return pairs


def _silver_pairs(texts: list[str], emb: Tensor, k: int, n_spread: int, excluded: set, rng: random.Random
                  ) -> pd.DataFrame:
    found: list[tuple[int, int, float]] = []
    if k:
        scores, idx = top_k(emb, k)
        found += [(i, j, s) for i in range(len(texts)) for j, s in zip(idx[i].tolist(), scores[i].tolist())]
    if n_spread:
        found += [(i, j, s) for i, partners in enumerate(spread(emb, n_spread, rng)) for j, s in partners]
    seen, rows = set(), []
    for i, j, s in found:
        key = frozenset((normalise(texts[i]), normalise(texts[j])))
        if key in seen or key in excluded:  # one order per pair: the teacher scores (a, b) once
            continue
        seen.add(key)
        rows.append((make_pair_id(texts[i], texts[j]), texts[i], texts[j], round(s, 4)))
    return pd.DataFrame(rows, columns=["pair_id", "text_a", "text_b", "similarity"])


class Window:
    """How groups take their negatives: `negatives`, `window_end`, the false-negative filter, the seeded RNG."""

    def __init__(self, negatives: str = "hardest", window_end: int | None = None, margin: float | None = None,
                 scorer: TeacherScores | None = None, rng: random.Random | None = None) -> None:
        self.negatives, self.window_end, self.margin, self.scorer = negatives, window_end, margin, scorer
        self.rng = rng or random.Random(0)


def false_negatives(positive: np.ndarray, candidates: np.ndarray, margin: float) -> np.ndarray:
    """Which candidates the teacher scores above `margin` times their positive's score (NV-Retriever's relative
    margin): likely unlabelled positives, not negatives.

    Args:
        positive: (n_groups,) teacher score of each group's positive.
        candidates: (n_groups, n_candidates) teacher score of each candidate (NaN: padding, never dropped).
        margin: e.g. 0.95.
    Returns:
        (n_groups, n_candidates) bool, True where the candidate is dropped.
    """
    with np.errstate(invalid="ignore"):
        return candidates > margin * positive[:, None]


def _groups(texts: list[str], emb: Tensor, positives: str, min_gold: float | None, n_negatives: int,
            skip_top: int, excluded: set, window: Window | None = None,
            encode_queries: Callable[[list[str]], Tensor] | None = None, asymmetric: bool = False) -> pd.DataFrame:
    """Groups of (query, positive, negatives from the pool). Queries outside the pool (questions against a pool of
    answer sentences) are encoded apart with `encode_queries`, as are all of them when `asymmetric` (the student
    gives queries and documents different prefixes); a query inside the pool is never its own negative."""
    window = window or Window()
    pairs, _ = read_pairs(positives, label_column="label" if min_gold is not None else None)
    if min_gold is not None:
        if "gold" not in pairs.column_names:
            raise DataError(f"{positives}: --min_gold needs gold labels, and the file has none; drop --min_gold")
        pairs = pairs.filter(lambda row: row["gold"] >= min_gold)
    position = {normalise(t): i for i, t in enumerate(texts)}
    queries = pairs["text_a"]
    for what, texts_ in (("queries", [] if encode_queries else queries), ("positives", pairs["text_b"])):
        missing = [t for t in texts_ if normalise(t) not in position]
        if missing:
            raise DataError(f"{positives}: {len(missing)} {what} are not in the pool (first {missing[0][:60]!r}); add "
                            f"their file to --sentences")
    queries, positive_texts = list(queries), list(pairs["text_b"])
    own = [(g, position[normalise(q)]) for g, q in enumerate(queries) if normalise(q) in position]
    apart = encode_queries is not None and (asymmetric or len(own) < len(queries))
    q_emb = encode_queries(queries) if apart else emb[torch.tensor([i for _, i in own])]  # type: ignore[misc]
    sims = q_emb @ emb.T  # (n_queries, N)
    if own:
        rows_, cols = zip(*own)
        sims[torch.tensor(rows_), torch.tensor(cols)] = float("-inf")
    if window.negatives != "random":
        # take enough nearest sentences that the query itself, its positive and skip_top still leave n_negatives
        depth = min(window.window_end or n_negatives + skip_top + 2, len(texts) - 1)
        top = sims.topk(depth, dim=1).indices.tolist()
    candidates = []
    for g, (q, p) in enumerate(zip(queries, positive_texts)):
        skip = {normalise(q), normalise(p)}

        def usable(j: int, q: str = q, skip: set = skip) -> bool:
            return normalise(texts[j]) not in skip and frozenset((normalise(q), normalise(texts[j]))) not in excluded

        if window.negatives == "random":
            candidates.append(_random_candidates(len(texts), n_negatives, usable, window.rng))
            continue
        candidates.append([j for j in top[g][skip_top:window.window_end] if usable(j)])
    groups = range(len(queries))
    if window.margin is not None:
        candidates = _drop_false_negatives(texts, queries, positive_texts, candidates, window)
        groups = [g for g in groups if len(candidates[g]) >= n_negatives]
        if not groups:
            raise DataError(f"{positives}: after the false-negative filter (margin {window.margin}) no group keeps "
                            f"n_negatives={n_negatives} negatives; widen --window_end or raise "
                            f"--false_negative_margin (is the teacher trained?)")
        if len(groups) < len(queries):  # GroupDataModule needs 1 + n_negatives rows in every group
            print(f"mine: {len(queries) - len(groups)} groups left with fewer than n_negatives={n_negatives} "
                  f"negatives are dropped (widen window_end to keep them)")
    rows = []
    for g in groups:
        q, p = queries[g], positive_texts[g]
        rows.append((g, q, p, float((q_emb[g] @ emb[position[normalise(p)]]).item())))
        if window.negatives == "hardest":
            taken = candidates[g][:n_negatives]
        else:  # a seeded sample, written in rank order
            keep = set(window.rng.sample(range(len(candidates[g])), min(n_negatives, len(candidates[g]))))
            taken = [j for k, j in enumerate(candidates[g]) if k in keep]
        rows += [(g, q, texts[j], float(sims[g, j].item())) for j in taken]
    frame = pd.DataFrame(rows, columns=["group", "text_a", "text_b", "similarity"])
    frame.insert(0, "pair_id", [make_pair_id(a, b) for a, b in zip(frame["text_a"], frame["text_b"])])
    frame["group"] = frame["group"].astype(str)
    return frame


def _random_candidates(n_pool: int, n: int, usable: Callable[[int], bool], rng: random.Random) -> list[int]:
    """Up to `n` usable pool indices, drawn uniformly without replacement (seeded)."""
    found: list[int] = []
    seen: set[int] = set()
    while len(found) < n and len(seen) < n_pool:
        j = rng.randrange(n_pool)
        if j not in seen:
            seen.add(j)
            if usable(j):
                found.append(j)
    return found


def _drop_false_negatives(texts: list[str], queries: list[str], positives: list[str], candidates: list[list[int]],
                          window: Window) -> list[list[int]]:
    """`candidates` without those the teacher scores above the margin of their positive; prints the count."""
    width = max((len(c) for c in candidates), default=0)
    text_a = [q for q, c in zip(queries, candidates) for _ in range(1 + len(c))]
    text_b = [t for p, c in zip(positives, candidates) for t in (p, *(texts[j] for j in c))]
    flat = window.scorer(text_a, text_b)  # type: ignore[misc]
    positive = np.empty(len(candidates), np.float32)
    scores = np.full((len(candidates), width), np.nan, np.float32)  # (n_groups, n_candidates)
    at = 0
    for g, c in enumerate(candidates):
        positive[g] = flat[at]
        scores[g, :len(c)] = flat[at + 1:at + 1 + len(c)]
        at += 1 + len(c)
    dropped = false_negatives(positive, scores, window.margin)  # type: ignore[arg-type]
    kept = [[j for k, j in enumerate(c) if not dropped[g, k]] for g, c in enumerate(candidates)]
    total = sum(len(c) for c in candidates)
    print(f"mine: false-negative filter (teacher score > {window.margin} x the positive's): dropped "
          f"{int(dropped.sum())} of {total} candidates in {int(dropped.any(axis=1).sum())} of {len(candidates)} groups")
    return kept


class TeacherScores:
    """Teacher scores of (text_a, text_b) pairs on the target scale (the manifest's `score_transform`), from
    score caches or from a teacher scoring them here.

    Args:
        caches: score cache folders (`distill cache`) holding every pair asked for.
        teacher: a teacher LightningModule (used when no caches are given).
        ckpt_path: the teacher's `distill fit` checkpoint, if it needs one.
        batch_size: pairs per forward pass.
    """

    def __init__(self, caches: list[str] | None, teacher: pl.LightningModule | None, ckpt_path: str | None,
                 batch_size: int = 64) -> None:
        self.caches, self.teacher, self.batch_size = caches, teacher, batch_size
        if not caches and teacher is not None and ckpt_path:
            from distill.cache import load_teacher_checkpoint

            load_teacher_checkpoint(teacher, ckpt_path)

    def __call__(self, text_a: list[str], text_b: list[str]) -> np.ndarray:
        ids = [make_pair_id(a, b) for a, b in zip(text_a, text_b)]
        if self.caches:
            return self._cached(ids, text_a, text_b)
        return self._scored(ids, text_a, text_b)

    def _cached(self, ids: list[str], text_a: list[str], text_b: list[str]) -> np.ndarray:
        from distill.cache_join import ScoreCache

        known: dict[str, float] = {}
        for folder in self.caches or []:
            known.update(ScoreCache(folder).scores())  # type: ignore[arg-type]
        missing = [i for i, pid in enumerate(ids) if pid not in known]
        if missing:
            i = missing[0]
            raise DataError(f"--teacher_cache {', '.join(self.caches or [])}: {len(missing)} of {len(ids)} (query, "
                            f"candidate) pairs have no cached score (first {text_a[i][:40]!r} / {text_b[i][:40]!r}); "
                            f"run `distill cache` on a group file mined with the same student and --n_negatives >= "
                            f"window_end, or give --teacher instead")
        return np.asarray([known[pid] for pid in ids], np.float32)

    def _scored(self, ids: list[str], text_a: list[str], text_b: list[str]) -> np.ndarray:
        from datasets import Dataset
        from torch.utils.data import DataLoader

        from distill.data import PairCollator, load_tokenizer, tokenize
        from distill.score_cache import apply_transform

        teacher = self.teacher
        assert teacher is not None  # _check_negative_options: caches or a teacher
        spec = teacher.tokenization()
        rows = Dataset.from_dict({"pair_id": ids, "text_a": text_a, "text_b": text_b})
        rows = rows.map(tokenize, batched=True, fn_kwargs=spec, remove_columns=["text_a", "text_b"])
        # longest first, so each batch pads to lengths alike (unsorted, a batch pads to its longest pair); the
        # scores go back to the callers' order below
        order = np.argsort([-len(ids_) for ids_ in rows["input_ids"]], kind="stable")
        loader = DataLoader(rows.select(order), batch_size=self.batch_size,
                            collate_fn=PairCollator(load_tokenizer(spec["tokenizer"]).pad_token_id or 0))
        was_training = teacher.training
        teacher.eval()
        with torch.inference_mode():
            sorted_raw = torch.cat([teacher(batch).float().cpu() for batch in loader]).numpy()
        teacher.train(was_training)
        raw = np.empty_like(sorted_raw)
        raw[order] = sorted_raw
        return apply_transform(raw, teacher.score_transform).astype(np.float32)


def _check_negative_options(negatives: str, n_negatives: int, skip_top: int, window_end: int | None,
                            margin: float | None, caches: list[str] | None, teacher: pl.LightningModule | None,
                            teacher_ckpt: str | None) -> None:
    """One error naming every groups-mode negative option that does not fit the others."""
    problems = []
    if negatives == "window" and window_end is None:
        problems.append("negatives=window needs --window_end (sample from ranks skip_top..window_end)")
    if window_end is not None and negatives == "random":
        problems.append("window_end does not apply to negatives=random (the whole pool); drop it")
    if window_end is not None and window_end < skip_top + n_negatives:
        problems.append(f"window_end={window_end} leaves fewer than n_negatives={n_negatives} ranks after "
                        f"skip_top={skip_top}; raise window_end")
    if margin is not None:
        if not 0 < margin:
            problems.append(f"false_negative_margin={margin} (expected > 0, e.g. 0.95)")
        if negatives == "hardest" and window_end is None:
            problems.append("false_negative_margin with negatives=hardest needs --window_end (the deepest rank the "
                            "teacher scores)")
        if negatives == "random":
            problems.append("false_negative_margin applies to ranked negatives (hardest, window): the teacher would "
                            "score the whole pool for random ones")
        if not caches and teacher is None:
            problems.append("false_negative_margin needs teacher scores: --teacher_cache or --teacher")
        if not caches and teacher is not None and not teacher_ckpt and not hasattr(teacher, "content_sha256"):
            problems.append("--teacher is built from a backbone (an untrained head): give --teacher_ckpt, or a "
                            "teachers.FolderCrossEncoder")
    elif caches or teacher is not None:
        problems.append("--teacher_cache / --teacher are used by false_negative_margin only; set it or drop them")
    if problems:
        raise ValueError(f"distill mine: {'; '.join(problems)}")
