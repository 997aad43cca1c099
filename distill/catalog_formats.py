"""Readers of the data sets' own file layouts (ASSETS.md "format traps"), for the catalog (`distill.catalog`).

Each returns the rows DESIGN.md names: pairs (`text_a`, `text_b`, `label`), parallel (`source`, `translation`,
`lang`) or retrieval (`queries`, `corpus`, `qrels`); a file in another layout is a one-line CatalogError.
Leaf module: pandas and datasets only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict


class CatalogError(ValueError):
    """A name the catalog cannot resolve, or a set folder it cannot read; the message names the fix."""


def _stsb(path: Path) -> Dataset:
    # tab-separated, no header; 197 lines carry extra columns after s2 and quotes are literal,
    # so split on tabs and take fields 4-6 instead of using a CSV parser (ASSETS.md "format traps")
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) < 7), None)
    if bad is not None:
        raise CatalogError(f"{path}, line {bad + 1}: {len(rows[bad])} tab-separated fields, expected >= 7 (genre, "
                           f"file, year, id, score, s1, s2); this is not the STS-B archive layout: restore the "
                           f"original sts-*.csv files")
    return Dataset.from_dict({"text_a": [r[5] for r in rows], "text_b": [r[6] for r in rows],
                              "label": [_number(r[4], path, i) for i, r in enumerate(rows)]})


def _number(value: str, path: Path, i: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise CatalogError(f"{path}, line {i + 1}: score {value!r} is not a number; this is not the set's layout "
                           f"(see ASSETS.md): restore the original file") from None


def _stsb_mt(path: Path) -> Dataset:
    frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding="utf-8")
    if frame.shape[1] != 3:
        raise CatalogError(f"{path}: {frame.shape[1]} comma-separated columns, expected 3 (s1, s2, score); this is "
                           f"not the stsb_multi_mt layout: restore the original file")
    return Dataset.from_dict({"text_a": frame[0].tolist(), "text_b": frame[1].tolist(),
                              "label": [_number(v, path, i) for i, v in enumerate(frame[2])]})


def read_lines(path: Path) -> list[str]:
    """The lines of a text file, split on newlines only: `str.splitlines` also splits on U+0085, U+2028 and other
    separators that occur inside sentences (tatoeba_challenge eng-pol has a U+0085 in a Polish line), which would
    shift every later line against its translation."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


_lines = read_lines


def _parallel(english: list[str], other: list[str], lang: str, where: str) -> Dataset:
    if len(english) != len(other):
        raise CatalogError(f"{where}: {len(other)} {lang} lines but {len(english)} English lines; the two sides must "
                           f"be line-aligned: restore the original files")
    return Dataset.from_dict({"source": english, "translation": other, "lang": [lang] * len(other)})


def _squad(path: Path) -> DatasetDict:
    """SQuAD-format JSON -> queries (questions with their answers), corpus (paragraphs), qrels (question ->
    its paragraph). Paragraph ids are `<title>/<index>`, the same in every XQuAD language."""
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CatalogError(f"{path}: not SQuAD-format JSON ({type(err).__name__}); restore the original file") \
            from None
    queries: dict[str, list] = {"query_id": [], "text": [], "answers": [], "answer_starts": []}
    corpus: dict[str, list] = {"doc_id": [], "title": [], "text": []}
    qrels: dict[str, list] = {"query_id": [], "doc_id": [], "relevance": []}
    for article in articles:
        for k, paragraph in enumerate(article["paragraphs"]):
            doc_id = f"{article['title']}/{k}"
            corpus["doc_id"].append(doc_id)
            corpus["title"].append(article["title"])
            corpus["text"].append(paragraph["context"])
            for qa in paragraph["qas"]:
                queries["query_id"].append(qa["id"])
                queries["text"].append(qa["question"])
                queries["answers"].append([a["text"] for a in qa.get("answers", [])])
                queries["answer_starts"].append([int(a["answer_start"]) for a in qa.get("answers", [])])
                qrels["query_id"].append(qa["id"])
                qrels["doc_id"].append(doc_id)
                qrels["relevance"].append(1)
    return DatasetDict(queries=Dataset.from_dict(queries), corpus=Dataset.from_dict(corpus),
                       qrels=Dataset.from_dict(qrels))


def _beir(folder: Path, split: str) -> DatasetDict:
    """BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv; queries kept: those the split judges."""
    qrels = pd.read_csv(folder / "qrels" / f"{split}.tsv", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    if list(qrels.columns[:3]) != ["query-id", "corpus-id", "score"]:
        raise CatalogError(f"{folder / 'qrels' / f'{split}.tsv'}: columns {list(qrels.columns)}, expected query-id, "
                           f"corpus-id, score (BEIR layout): restore the original file")
    corpus = pd.read_json(folder / "corpus.jsonl", lines=True, dtype=False)
    queries = pd.read_json(folder / "queries.jsonl", lines=True, dtype=False)
    judged = set(qrels["query-id"])
    queries = queries[queries["_id"].astype(str).isin(judged)]
    return DatasetDict(
        queries=Dataset.from_dict({"query_id": queries["_id"].astype(str).tolist(), "text": queries["text"].tolist()}),
        corpus=Dataset.from_dict({"doc_id": corpus["_id"].astype(str).tolist(), "title": corpus["title"].tolist(),
                                  "text": corpus["text"].tolist()}),
        qrels=Dataset.from_dict({"query_id": qrels["query-id"].tolist(), "doc_id": qrels["corpus-id"].tolist(),
                                 "relevance": qrels["score"].astype(int).tolist()}))


def _challenge_pair(code: str) -> str:
    """Folder of a Tatoeba Challenge pair: the two codes in alphabetical order (`deu-eng`, `eng-fra`)."""
    return "-".join(sorted((code, "eng")))
