"""`distill mine`: silver pairs and hard negatives from a sentence pool, found with the current student.

Pairs mode (AugSBERT, Thakur et al., NAACL 2021, arXiv:2010.08240): each sentence of the pool is an anchor;
its `top_k` nearest neighbours (the pairs a teacher is most informative on) plus `n_spread` partners sampled
across the similarity range (so the silver set is not all near-duplicates) become pairs with no label.
Groups mode: each (query, positive) pair of `positives` gets the `n_negatives` pool sentences the student
finds most similar to the query (after `skip_top`, which guards against unlabelled true positives).

Either way the output is a pair file (`pair_id, text_a, text_b`, plus `similarity` and, for groups, `group`)
that `distill cache` scores with the teacher and `PairDataModule` / `GroupDataModule` train on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import pandas as pd
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
    """
    _check_options(mode, positives, top_k_neighbours=top_k_neighbours, n_spread=n_spread, n_negatives=n_negatives,
                   skip_top=skip_top, batch_size=batch_size)
    if ckpt_path:
        load_student_weights(student, ckpt_path)
    texts = pool_texts(sentences)
    if len(texts) < 2:
        raise DataError(f"the pool {sentences} has {len(texts)} distinct sentence(s); mining needs at least 2")
    rng = random.Random(seed)
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(student.encode(texts, batch_size=batch_size), dim=-1)  # (N, dim)
    excluded = _pair_set(exclude or [])
    if mode == "pairs":
        frame = _silver_pairs(texts, emb, top_k_neighbours, n_spread, excluded, rng)
        if max_pairs is not None and len(frame) > max_pairs:
            frame = frame.iloc[sorted(rng.sample(range(len(frame)), max_pairs))]
    else:
        frame = _groups(texts, emb, positives, min_gold, n_negatives, skip_top, excluded)  # type: ignore[arg-type]
    path = write_pairs(frame.reset_index(drop=True), out)
    print(f"mine: {len(frame)} {'pairs' if mode == 'pairs' else 'rows in groups'} from {len(texts)} sentences "
          f"-> {path}")
    return path


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


def _groups(texts: list[str], emb: Tensor, positives: str, min_gold: float | None, n_negatives: int,
            skip_top: int, excluded: set) -> pd.DataFrame:
    pairs, _ = read_pairs(positives, label_column="label" if min_gold is not None else None)
    if min_gold is not None:
        if "gold" not in pairs.column_names:
            raise DataError(f"{positives}: --min_gold needs gold labels, and the file has none; drop --min_gold")
        pairs = pairs.filter(lambda row: row["gold"] >= min_gold)
    position = {normalise(t): i for i, t in enumerate(texts)}
    queries = pairs["text_a"]
    for what, texts_ in (("queries", queries), ("positives", pairs["text_b"])):
        missing = [t for t in texts_ if normalise(t) not in position]
        if missing:
            raise DataError(f"{positives}: {len(missing)} {what} are not in the pool (first {missing[0][:60]!r}); add "
                            f"their file to --sentences")
    # take enough nearest sentences that the query itself, its positive and skip_top still leave n_negatives
    depth = min(n_negatives + skip_top + 2, len(texts) - 1)
    q_idx = torch.tensor([position[normalise(q)] for q in queries])
    sims = emb[q_idx] @ emb.T  # (n_queries, N)
    sims[torch.arange(len(q_idx)), q_idx] = float("-inf")
    scores, idx = sims.topk(depth, dim=1)
    rows = []
    for g, (q, p) in enumerate(zip(queries, pairs["text_b"])):
        rows.append((g, q, p, float((emb[position[normalise(q)]] @ emb[position[normalise(p)]]).item())))
        taken = 0
        for j, s in list(zip(idx[g].tolist(), scores[g].tolist()))[skip_top:]:
            t = texts[j]
            if normalise(t) == normalise(p) or frozenset((normalise(q), normalise(t))) in excluded:
                continue
            rows.append((g, q, t, s))
            taken += 1
            if taken == n_negatives:
                break
    frame = pd.DataFrame(rows, columns=["group", "text_a", "text_b", "similarity"])
    frame.insert(0, "pair_id", [make_pair_id(a, b) for a, b in zip(frame["text_a"], frame["text_b"])])
    frame["group"] = frame["group"].astype(str)
    return frame
