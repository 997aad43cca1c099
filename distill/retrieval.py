"""Retrieval sets for distillation and evaluation: answer-sentence retrieval (ReQA / LAReQA style) and SciFact.

Answer-sentence retrieval (Ahmad et al., 2019, arXiv:1907.04780; Roy et al., 2020, arXiv:2004.05484): the
queries are SQuAD-format questions, the corpus is every sentence of the set's paragraphs (split here,
deterministically: `sentence_spans`), and a sentence is relevant to a question when it overlaps one of its gold
answer spans. Names (`load`):
- `reqa/squad/train`, `reqa/squad/dev`: SQuAD v1.1 dev minus every XQuAD paragraph and its questions, split by
  paragraph (`squad_minus_xquad`; ASSETS.md: all 240 XQuAD paragraphs are SQuAD v1.1 dev paragraphs);
- `reqa/xquad/<lang>`: XQuAD questions in `<lang>` against the sentences of the `<lang>` paragraphs;
- `reqa/xquad/<lang>-en`: the same questions against the English sentence pool (DESIGN.md's `de-en` key);
- `scifact/test`, `scifact/train`: BEIR SciFact from the catalog (abstract-level, English), validated.
Every set is a `DatasetDict` of `queries` (`query_id`, `text`), `corpus` (`doc_id`, `text`) and `qrels`
(`query_id`, `doc_id`, `relevance`), checked by `check_retrieval_set`. Leaf module: the catalog and stdlib.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from datasets import Dataset, DatasetDict, Features, Value

from distill import catalog
from distill.cache_keys import make_pair_id, normalise
from distill.languages import XQUAD_LANGUAGES


class RetrievalError(ValueError):
    """A retrieval set that cannot be evaluated or trained on; the message names the set, the row and the fix."""


SEED = 0  # the train/dev split of `squad_minus_xquad`: fixed, so every run and every checkout agrees
DEV_FRACTION = 0.1  # of the paragraphs left after the XQuAD exclusion
QRELS = Features(query_id=Value("string"), doc_id=Value("string"), relevance=Value("int64"))

# --------------------------------------------------------------------------------------------- sentences

#: words that end with a full stop without ending a sentence (compared lower-cased, without the stop)
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr sen rep gov gen col lt sgt capt cmdr adm rev hon mt ft no nos vol vols pp ch "
    "fig figs eq approx ca cf vs etc al inc ltd co corp dept univ est jan feb mar apr jun jul aug sep sept oct nov "
    "dec e.g i.e a.d b.c bzw usw ca ggf vgl z.b d.h u.a sr sra srta dña av etc".split())
_CLOSERS = "\"'”’»)]}」』）》"
# a run of terminators and closing quotes/brackets, then whitespace: a candidate sentence end
_LATIN_END = re.compile(rf"[.!?…;\u037e]+[{re.escape(_CLOSERS)}]*(?=\s)")
# full-width and Indic/Arabic terminators end a sentence whatever follows (Chinese puts no space after 。)
_HARD_END = re.compile(rf"[。！？।॥؟۔]+[{re.escape(_CLOSERS)}]*")
_TRIM = " \t\n\r\x0b\x0c\u00a0\u3000\ufeff"  # BOMs occur at the start of some XQuAD paragraphs


def sentence_spans(text: str, lang: str = "en") -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text`, in order, trimmed of surrounding whitespace.

    Deterministic rules, one table for every language: a sentence ends after `. ! ? …` (plus closing quotes or
    brackets) followed by whitespace, unless the next text starts lower-case or with a digit (`c. 1500`,
    `No. 5`) or the full stop closes an abbreviation (`Mr.`, `e.g.`, `U.S.`, a single-letter initial); after
    `。！？।॥؟۔` whatever follows; Greek also ends questions with `;`. Thai writes no sentence punctuation and its
    single spaces also separate phrases, so a Thai text also ends a sentence at a run of two or more spaces.

    Args:
        text: a paragraph.
        lang: its ISO 639-1 code (`el` and `th` have the rules above; every other code shares one rule).
    """
    ends: set[int] = set()
    for m in _LATIN_END.finditer(text):
        mark = m.group(0).rstrip(_CLOSERS)
        if mark.strip(";\u037e") == "" and lang != "el":  # a semicolon ends a sentence only as the Greek question mark
            continue
        after = text[m.end():].lstrip()
        if not after or after[0].islower() or after[0].isdigit():
            continue
        if mark.endswith(".") and len(mark) == 1:
            word = text[:m.start()].rsplit(None, 1)[-1].lstrip(_CLOSERS + "(") if text[:m.start()].strip() else ""
            if len(word) == 1 and word.isalpha() or "." in word or word.lower() in ABBREVIATIONS:
                continue
        ends.add(m.end())
    ends |= {m.end() for m in _HARD_END.finditer(text)}
    if lang == "th":
        ends |= {m.start() for m in re.finditer(r"[ \u00a0]{2,}", text)}
    spans, start = [], 0
    for end in sorted(ends | {len(text)}):
        piece = text[start:end]
        left = len(piece) - len(piece.lstrip(_TRIM))
        right = len(piece.rstrip(_TRIM))
        if right > left:
            spans.append((start + left, start + right))
        start = end
    return spans


def split_sentences(text: str, lang: str = "en") -> list[str]:
    """The sentences of `text` (see `sentence_spans`)."""
    return [text[s:e] for s, e in sentence_spans(text, lang)]


# -------------------------------------------------------------------------------------- answer sentences


def _answer_spans(context: str, answers: list[str], starts: list[int]) -> list[tuple[int, int]]:
    """Each gold answer's span; a start that does not point at its text falls back to the first occurrence
    (the reconstructed SQuAD files give `answer_start` as the first occurrence anyway)."""
    spans = []
    for answer, start in zip(answers, starts):
        if not answer:
            continue
        if context[start:start + len(answer)] != answer:
            start = context.find(answer)
            if start < 0:
                continue
        spans.append((start, start + len(answer)))
    return spans


def _sentence_set(questions: Dataset, paragraphs: Dataset, pool: DatasetDict, pool_lang: str, name: str,
                  drop: frozenset[str] = frozenset()) -> DatasetDict:
    """Questions (`query_id`, `text`) against the sentences of `paragraphs` (doc ids `<paragraph>/<i>`); the
    relevant sentences come from `pool`'s answers to the same question ids (the pool's own language).

    Sentences with no letter or digit (`...`) are left out, and so are those whose normalised text is in `drop`
    (with the questions they leave without a relevant sentence).
    """
    contexts = dict(zip(paragraphs["doc_id"], paragraphs["text"]))
    spans = {doc: [(i, s, e) for i, (s, e) in enumerate(sentence_spans(text, pool_lang))
                   if any(c.isalnum() for c in text[s:e]) and normalise(text[s:e]) not in drop]
             for doc, text in contexts.items()}
    corpus: dict[str, list] = {"doc_id": [], "text": []}
    for doc, text in contexts.items():
        for i, s, e in spans[doc]:
            corpus["doc_id"].append(f"{doc}/{i}")
            corpus["text"].append(text[s:e])
    paragraph_of = dict(zip(pool["qrels"]["query_id"], pool["qrels"]["doc_id"]))
    answers = {q: (a, s) for q, a, s in zip(pool["queries"]["query_id"], pool["queries"]["answers"],
                                            pool["queries"]["answer_starts"])}
    qrels: dict[str, list] = {"query_id": [], "doc_id": [], "relevance": []}
    for query in questions["query_id"]:
        doc = paragraph_of.get(query)
        if doc not in contexts:
            continue  # no paragraph in this pool: `check_retrieval_set` names the query
        found = _answer_spans(contexts[doc], *answers[query])
        for i, s, e in spans[doc]:
            if any(a < e and s < b for a, b in found):
                qrels["query_id"].append(query)
                qrels["doc_id"].append(f"{doc}/{i}")
                qrels["relevance"].append(1)
    if drop:
        judged = set(qrels["query_id"])
        questions = questions.filter(lambda r: r["query_id"] in judged)
    rows = DatasetDict(queries=questions.select_columns(["query_id", "text"]), corpus=Dataset.from_dict(corpus),
                       qrels=Dataset.from_dict(qrels, features=QRELS))
    check_retrieval_set(rows, name)
    return rows


def _lang_of(name: str) -> str:
    dataset, *parts = name.split("/")
    if dataset == "xquad" and parts:
        return parts[0]
    if dataset == "squad_dev":
        return "en"
    raise RetrievalError(f"{name}: answer-sentence sets are built from squad_dev or xquad/<lang> (SQuAD-format "
                         f"questions with answer spans); give one of those")


def answer_sentence_set(name_or_entry: str | catalog.Entry, pool_lang: str | None = None) -> DatasetDict:
    """A SQuAD-format catalog set as answer-sentence retrieval: its questions against the sentences of its
    paragraphs, relevant = the sentence(s) overlapping a gold answer span.

    Args:
        name_or_entry: `squad_dev`, `xquad/<lang>`, or the catalog `Entry` of one of them.
        pool_lang: XQuAD only: the language of the sentence pool (e.g. `en` for the `de-en` direction: German
            questions, English sentences, relevance from the English answer spans); default: the questions' own.

    Raises:
        RetrievalError: another set, a pool language XQuAD lacks, or a question without a relevant sentence.
    """
    entry = catalog.load(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    lang = _lang_of(entry.name)
    pool_lang = pool_lang or lang
    if pool_lang != lang:
        if not entry.name.startswith("xquad/") or pool_lang not in XQUAD_LANGUAGES:
            raise RetrievalError(f"{entry.name}: pool_lang={pool_lang!r}; another pool language needs an XQuAD set "
                                 f"and one of {', '.join(XQUAD_LANGUAGES)}")
        pool = catalog.load(f"xquad/{pool_lang}").rows
    else:
        pool = entry.rows
    name = f"{entry.name} (questions) x {pool_lang} sentences"
    return _sentence_set(entry.rows["queries"], pool["corpus"], pool, pool_lang, name)


def _xquad_exclusion() -> tuple[set[str], set[str], set[str]]:
    """What training must never see: XQuAD's paragraphs, question ids and questions (normalised English)."""
    xquad = catalog.load("xquad/en").rows
    return ({normalise(t) for t in xquad["corpus"]["text"]}, set(xquad["queries"]["query_id"]),
            {normalise(t) for t in xquad["queries"]["text"]})


def squad_minus_xquad(split: str, dev_fraction: float = DEV_FRACTION, seed: int = SEED) -> DatasetDict:
    """SQuAD v1.1 dev without any XQuAD paragraph or question, as answer-sentence retrieval, split by paragraph
    (a paragraph's sentences and questions are all in `train` or all in `dev`).

    Args:
        split: `train` or `dev`.
        dev_fraction: share of the remaining paragraphs in `dev`.
        seed: seed of the paragraph shuffle (sorted paragraph ids, then `random.Random(seed).shuffle`).
    """
    if split not in ("train", "dev"):
        raise RetrievalError(f"squad_minus_xquad: split {split!r}; expected 'train' or 'dev'")
    squad = catalog.load("squad_dev").rows
    paragraphs, question_ids, questions = _xquad_exclusion()
    keep_docs = sorted(d for d, t in zip(squad["corpus"]["doc_id"], squad["corpus"]["text"])
                       if normalise(t) not in paragraphs)
    random.Random(seed).shuffle(keep_docs)
    n_dev = round(len(keep_docs) * dev_fraction)
    chosen = set(keep_docs[:n_dev] if split == "dev" else keep_docs[n_dev:])
    corpus = squad["corpus"].filter(lambda r: r["doc_id"] in chosen)
    paragraph_of = dict(zip(squad["qrels"]["query_id"], squad["qrels"]["doc_id"]))
    queries = squad["queries"].filter(lambda r: paragraph_of[r["query_id"]] in chosen
                                      and r["query_id"] not in question_ids and normalise(r["text"]) not in questions)
    # a sentence can recur in another paragraph of the same article: it leaves the training pool as well
    held = frozenset(normalise(s) for p in paragraphs for s in split_sentences(p))
    rows = _sentence_set(queries, corpus, squad, "en", f"reqa/squad/{split}", drop=held)
    check_no_overlap(rows, paragraphs, question_ids, questions, f"reqa/squad/{split}")
    return rows


def check_no_overlap(rows: DatasetDict, paragraphs: set[str], question_ids: set[str], questions: set[str],
                     name: str) -> None:
    """Refuse a training set sharing a question (id or normalised text) or a sentence of a held-out paragraph
    with the test sets.

    Args:
        rows: the training set (answer-sentence retrieval rows).
        paragraphs: normalised texts of the held-out paragraphs.
        question_ids: held-out question ids.
        questions: normalised held-out question texts.
        name: the training set's name, for the message.
    """
    shared_ids = sorted(set(rows["queries"]["query_id"]) & question_ids)
    shared_texts = sorted({normalise(t) for t in rows["queries"]["text"]} & questions)
    held = {normalise(s) for p in paragraphs for s in split_sentences(p)}
    shared_sentences = sorted({normalise(t) for t in rows["corpus"]["text"]} & held)
    problems = [f"{len(v)} {what} (first {v[0][:60]!r})" for what, v in (
        ("question ids", shared_ids), ("questions", shared_texts), ("sentences", shared_sentences)) if v]
    if problems:
        raise RetrievalError(f"{name} shares {', '.join(problems)} with the held-out test paragraphs; drop those "
                             f"paragraphs and their questions from the training data")


def sample_queries(rows: DatasetDict, n_queries: int | None, seed: int = 0,
                   max_docs: int | None = None) -> DatasetDict:
    """A retrieval set with a seeded sample of `n_queries` queries and their qrels (None or more than it has: all),
    and with `max_docs`, a corpus cut to the sample's relevant documents plus a seeded sample of the others (a
    smaller pool is an easier task: for smoke runs and training subsets, never for reported test figures)."""
    ids = list(rows["queries"]["query_id"])
    kept = set(ids) if n_queries is None or n_queries >= len(ids) else set(
        random.Random(seed).sample(sorted(ids), n_queries))
    qrels = rows["qrels"].filter(lambda r: r["query_id"] in kept)
    corpus = rows["corpus"]
    if max_docs is not None and len(corpus) > max_docs:
        relevant = set(qrels["doc_id"])
        others = sorted(d for d in corpus["doc_id"] if d not in relevant)
        keep_docs = relevant | set(random.Random(seed).sample(others, max(0, max_docs - len(relevant))))
        corpus = corpus.filter(lambda r: r["doc_id"] in keep_docs)
    queries = rows["queries"] if len(kept) == len(ids) else rows["queries"].filter(lambda r: r["query_id"] in kept)
    return DatasetDict(queries=queries, corpus=corpus, qrels=qrels)


def positive_pairs(rows: DatasetDict) -> Dataset:
    """(question, relevant sentence) pairs of a retrieval set (`pair_id`, `text_a`, `text_b`): the positives
    `distill mine --mode=groups` takes, in qrels order."""
    text_of_query = dict(zip(rows["queries"]["query_id"], rows["queries"]["text"]))
    text_of_doc = dict(zip(rows["corpus"]["doc_id"], rows["corpus"]["text"]))
    pairs = [(text_of_query[q], text_of_doc[d]) for q, d, r in zip(rows["qrels"]["query_id"], rows["qrels"]["doc_id"],
                                                                    rows["qrels"]["relevance"]) if r > 0]
    return Dataset.from_dict({"pair_id": [make_pair_id(a, b) for a, b in pairs], "text_a": [a for a, _ in pairs],
                              "text_b": [b for _, b in pairs]})


# ----------------------------------------------------------------------------------------- validation


def check_retrieval_set(rows: DatasetDict, name: str) -> None:
    """Refuse a set that cannot be evaluated: a missing split or column, a duplicate doc id, a query with no
    relevant document, a qrels row naming a query or document the set lacks.

    Args:
        rows: `queries`, `corpus` and `qrels` (DESIGN.md "Data contracts").
        name: the set's name, for the message.
    """
    wanted = {"queries": ("query_id", "text"), "corpus": ("doc_id", "text"), "qrels": ("query_id", "doc_id",
                                                                                      "relevance")}
    for part, columns in wanted.items():
        if part not in rows:
            raise RetrievalError(f"{name}: no {part!r} split; a retrieval set has queries, corpus and qrels")
        missing = [c for c in columns if c not in rows[part].column_names]
        if missing:
            raise RetrievalError(f"{name}: {part} lack the column(s) {', '.join(missing)}; expected "
                                 f"{', '.join(columns)}")
    docs = rows["corpus"]["doc_id"]
    known = set(docs)
    if len(known) != len(docs):
        seen: set[str] = set()
        twice = next(d for d in docs if d in seen or seen.add(d))  # type: ignore[func-returns-value]
        raise RetrievalError(f"{name}: doc_id {twice!r} occurs more than once in the corpus; give each document "
                             f"one id")
    queries = set(rows["queries"]["query_id"])
    relevant: set[str] = set()
    for q, d, r in zip(rows["qrels"]["query_id"], rows["qrels"]["doc_id"], rows["qrels"]["relevance"]):
        if d not in known:
            raise RetrievalError(f"{name}: qrels name doc_id {d!r} (query {q!r}), which is not in the corpus; add "
                                 f"the document or drop the qrels row")
        if q not in queries:
            raise RetrievalError(f"{name}: qrels name query_id {q!r}, which is not among the queries; add the query "
                                 f"or drop the qrels row")
        if r > 0:
            relevant.add(q)
    lacking = [q for q in rows["queries"]["query_id"] if q not in relevant]
    if lacking:
        raise RetrievalError(f"{name}: {len(lacking)} queries have no relevant document (first {lacking[0]!r}); "
                             f"add qrels with relevance > 0 for them or drop them from the queries")


# ------------------------------------------------------------------------------------------------ names

SETS = ("reqa/squad/train", "reqa/squad/dev", *(f"reqa/xquad/{lang}" for lang in XQUAD_LANGUAGES),
        *(f"reqa/xquad/{lang}-en" for lang in XQUAD_LANGUAGES if lang != "en"), "scifact/train", "scifact/test")


def metric_suffix(name: str) -> str:
    """The `/<suffix>` of a set's metric keys (DESIGN.md): `de` (pool in the questions' language), `de-en`
    (English pool), `squad` (the SQuAD dev split), `scifact`."""
    if name.startswith("reqa/xquad/"):
        return name.removeprefix("reqa/xquad/")
    return {"reqa/squad/train": "squad_train", "reqa/squad/dev": "squad"}.get(name, name.split("/")[0])


def load(name: str) -> DatasetDict:
    """A retrieval set by name (module docstring), validated; memoised per process.

    Raises:
        RetrievalError: an unknown name (with the known ones) or a set that fails `check_retrieval_set`.
    """
    if name not in SETS:
        import difflib

        close = difflib.get_close_matches(name, SETS, n=3, cutoff=0.6)
        raise RetrievalError(f"unknown retrieval set {name!r}; "
                             f"{'close matches: ' + ', '.join(close) if close else 'sets: ' + ', '.join(SETS)}")
    return _load(name, str(catalog.data_root()))


@lru_cache(maxsize=32)
def _load(name: str, root: str) -> DatasetDict:
    if name.startswith("reqa/squad/"):
        return squad_minus_xquad(name.rsplit("/", 1)[1])
    if name.startswith("reqa/xquad/"):
        lang, _, pool = name.removeprefix("reqa/xquad/").partition("-")
        return answer_sentence_set(f"xquad/{lang}", pool_lang=pool or None)
    rows = catalog.load(name).rows
    check_retrieval_set(rows, name)
    return rows
