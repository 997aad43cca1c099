"""Answer-sentence retrieval sets (distill.retrieval): the sentence splitter, relevance from answer spans, the
English and own-language pools, the XQuAD exclusion (tiny files and, where present, the real data) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from distill import catalog, retrieval
from distill.cache_keys import normalise
from distill.retrieval import (
    RetrievalError,
    answer_sentence_set,
    check_retrieval_set,
    positive_pairs,
    sentence_spans,
    split_sentences,
    squad_minus_xquad,
)


@pytest.mark.parametrize(("text", "lang", "want"), [
    ("Mr. Smith went to Washington. He arrived at 5 p.m. on Monday. Then he left!",
     "en", ["Mr. Smith went to Washington.", "He arrived at 5 p.m. on Monday.", "Then he left!"]),
    ("The U.S. Army won in c. 1500 at St. Louis. J. R. R. Tolkien wrote it.",
     "en", ["The U.S. Army won in c. 1500 at St. Louis.", "J. R. R. Tolkien wrote it."]),
    ('He said "stop." Then he left... and came back. Was it 1990? Yes.',
     "en", ['He said "stop."', "Then he left... and came back.", "Was it 1990?", "Yes."]),
    ("No. 5 is here; it is big. Really (yes.) Done.", "en", ["No. 5 is here; it is big.", "Really (yes.)", "Done."]),
    ("我很好。你呢？“好的！”他说", "zh", ["我很好。", "你呢？", "“好的！”", "他说"]),
    ("यह एक है। वह दो है।", "hi", ["यह एक है।", "वह दो है।"]),
    ("هل هذا صحيح؟ نعم. انتهى", "ar", ["هل هذا صحيح؟", "نعم.", "انتهى"]),
    ("Τι είναι; Είναι καλό.", "el", ["Τι είναι;", "Είναι καλό."]),
    ("Τι είναι; Είναι καλό.", "en", ["Τι είναι; Είναι καλό."]),  # a semicolon ends a sentence in Greek only
    ("\ufeffทีม ชนะ  นอกจากนี้ แพ้", "th", ["ทีม ชนะ", "นอกจากนี้ แพ้"]),
])
def test_sentence_splitter_by_hand(text, lang, want):
    """Abbreviations, initials, `c. 1500`, closing quotes, lower-case continuations, full-width, Devanagari and
    Arabic stops, the Greek question mark, Thai double spaces and a leading BOM, each split as written by hand;
    the spans point at exactly those sentences."""
    assert split_sentences(text, lang) == want
    assert [text[s:e] for s, e in sentence_spans(text, lang)] == want


def squad_json(articles: list[tuple[str, list[tuple[str, list[tuple[str, str, list[str]]]]]]]) -> dict:
    """SQuAD format from (title, [(context, [(id, question, [answers])])]); answer_start = first occurrence."""
    return {"data": [{"title": title, "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": question,
                                      "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}
                                     for qid, question, answers in qas]}
        for context, qas in paragraphs]} for title, paragraphs in articles]}


HELD_EN = ("The cat sat on the mat. It was red. The dog barked.",
           [("x1", "Where did the cat sit?", ["on the mat"]), ("x2", "What colour was it?", ["red. The dog"])])
HELD_DE = ("Die Katze saß auf der Matte. Sie war rot. Der Hund bellte.",
           [("x1", "Wo saß die Katze?", ["auf der Matte"]), ("x2", "Welche Farbe hatte sie?", ["rot"])])
OTHERS = [
    ("Paris is in France. It is large.", [("s1", "Where is Paris?", ["France"])]),
    ("Rome is old. It has ruins.", [("s2", "What does Rome have?", ["ruins"]),
                                    ("s3", "Where did the cat sit?", ["old"])]),  # an XQuAD question's text
    ("Oslo is cold. The dog barked.", [("s4", "Is Oslo cold?", ["cold"])]),  # an XQuAD sentence recurs
    ("Bern is calm. It has bears.", [("s5", "What does Bern have?", ["bears"]),
                                     ("x1", "Where did the cat sit?", ["calm"])]),  # an XQuAD question's id
    ("Lima is high. It is dry.", [("s6", "Is Lima high?", ["high", "Lima is high"])]),
    ("Kyiv is green. It has parks.", [("s7", "What does Kyiv have?", ["parks"])]),
]


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with a 7-paragraph `squad_dev` (one paragraph is XQuAD's) and a 1-paragraph XQuAD (en, de)."""
    root = tmp_path / "data"
    (root / "squad_dev").mkdir(parents=True)
    (root / "xquad").mkdir()
    squad = squad_json([("Wiki", [HELD_EN, *OTHERS[:3]]), ("Other", OTHERS[3:])])
    (root / "squad_dev" / "dev-v1.1.reconstructed.json").write_text(json.dumps(squad), encoding="utf-8")
    for lang, paragraph in (("en", HELD_EN), ("de", HELD_DE)):
        (root / "xquad" / f"xquad.{lang}.json").write_text(json.dumps(squad_json([("Wiki", [paragraph])])),
                                                           encoding="utf-8")
    monkeypatch.setenv("DISTILL_DATA", str(root))
    catalog._load.cache_clear()
    retrieval._load.cache_clear()
    yield root
    catalog._load.cache_clear()
    retrieval._load.cache_clear()


def _qrels(rows: DatasetDict) -> set[tuple[str, str]]:
    return set(zip(rows["qrels"]["query_id"], rows["qrels"]["doc_id"]))


def test_relevant_sentences_hold_the_answer_span(data_dir):
    """The sentence holding the answer is relevant, and both sentences where an answer crosses a boundary; the
    corpus is every sentence of every paragraph, ids `<paragraph>/<sentence>`."""
    rows = answer_sentence_set("xquad/en")
    assert rows["corpus"]["doc_id"] == ["Wiki/0/0", "Wiki/0/1", "Wiki/0/2"]
    assert rows["corpus"]["text"] == ["The cat sat on the mat.", "It was red.", "The dog barked."]
    assert _qrels(rows) == {("x1", "Wiki/0/0"), ("x2", "Wiki/0/1"), ("x2", "Wiki/0/2")}
    assert rows["queries"]["text"] == ["Where did the cat sit?", "What colour was it?"]


def test_pool_in_the_question_language_or_english(data_dir):
    """`de` ranks German sentences with German answer spans; `de-en` German questions against the English pool,
    relevance from the English spans (x2 crosses a sentence boundary in English only)."""
    own = retrieval.load("reqa/xquad/de")
    assert own["corpus"]["text"] == ["Die Katze saß auf der Matte.", "Sie war rot.", "Der Hund bellte."]
    assert _qrels(own) == {("x1", "Wiki/0/0"), ("x2", "Wiki/0/1")}
    english = retrieval.load("reqa/xquad/de-en")
    assert english["queries"]["text"] == ["Wo saß die Katze?", "Welche Farbe hatte sie?"]
    assert english["corpus"]["text"][0] == "The cat sat on the mat."
    assert _qrels(english) == {("x1", "Wiki/0/0"), ("x2", "Wiki/0/1"), ("x2", "Wiki/0/2")}
    assert retrieval.metric_suffix("reqa/xquad/de-en") == "de-en" and retrieval.metric_suffix("reqa/xquad/de") == "de"


def test_training_split_leaves_out_xquad(data_dir):
    """Train and dev hold no XQuAD paragraph, question id, question text or sentence, are split by paragraph
    (disjoint, together every other paragraph), and the split is the same on every call."""
    train, dev = squad_minus_xquad("train", dev_fraction=0.5), squad_minus_xquad("dev", dev_fraction=0.5)
    for rows in (train, dev):
        assert not {"x1", "x2", "s3"} & set(rows["queries"]["query_id"])  # s3 asks an XQuAD question
        assert "The dog barked." not in rows["corpus"]["text"]
        assert not any(d.startswith("Wiki/0/") for d in rows["corpus"]["doc_id"])
    paragraphs = [{d.rsplit("/", 1)[0] for d in rows["corpus"]["doc_id"]} for rows in (train, dev)]
    assert not paragraphs[0] & paragraphs[1]
    assert paragraphs[0] | paragraphs[1] == {"Wiki/1", "Wiki/2", "Wiki/3", "Other/0", "Other/1", "Other/2"}
    assert len(paragraphs[1]) == 3
    assert squad_minus_xquad("dev", dev_fraction=0.5)["corpus"]["doc_id"] == dev["corpus"]["doc_id"]
    # s4's answer is in "Oslo is cold.", kept; the recurring XQuAD sentence "The dog barked." is gone
    both = {**dict(zip(train["queries"]["query_id"], train["queries"]["text"])),
            **dict(zip(dev["queries"]["query_id"], dev["queries"]["text"]))}
    assert set(both) == {"s1", "s2", "s4", "s5", "s6", "s7"}


def test_overlap_check_names_what_is_shared(data_dir):
    """The check itself bites: a training set holding a held-out question is refused, naming it."""
    rows = answer_sentence_set("squad_dev")
    with pytest.raises(RetrievalError, match=r"reqa/squad/train shares 2 question ids \(first 'x1'\).*drop"):
        retrieval.check_no_overlap(rows, set(), {"x1", "x2"}, set(), "reqa/squad/train")


def test_positive_pairs(data_dir):
    pairs = positive_pairs(answer_sentence_set("xquad/en"))
    assert list(zip(pairs["text_a"], pairs["text_b"])) == [
        ("Where did the cat sit?", "The cat sat on the mat."), ("What colour was it?", "It was red."),
        ("What colour was it?", "The dog barked.")]


def _set(qrels: list[tuple[str, str, int]]) -> DatasetDict:
    return DatasetDict(queries=Dataset.from_dict({"query_id": ["q1", "q2"], "text": ["a?", "b?"]}),
                       corpus=Dataset.from_dict({"doc_id": ["d1", "d2"], "text": ["a.", "b."]}),
                       qrels=Dataset.from_dict(dict(zip(("query_id", "doc_id", "relevance"), map(list, zip(*qrels))))))


def test_a_query_with_no_relevant_document_is_one_line():
    """q2 is judged only non-relevant: it could never be scored, and would silently count as 0."""
    with pytest.raises(RetrievalError, match=r"^mine: 1 queries have no relevant document \(first 'q2'\); add qrels"):
        check_retrieval_set(_set([("q1", "d1", 1), ("q2", "d2", 0)]), "mine")


def test_a_qrels_document_missing_from_the_corpus_is_one_line():
    with pytest.raises(RetrievalError, match=r"^mine: qrels name doc_id 'd9' \(query 'q2'\), which is not in the corp"):
        check_retrieval_set(_set([("q1", "d1", 1), ("q2", "d9", 1)]), "mine")


def test_an_unknown_set_name_lists_close_matches():
    with pytest.raises(RetrievalError, match=r"unknown retrieval set 'reqa/xquad/de-fr'; close matches: reqa/xquad/de"):
        retrieval.load("reqa/xquad/de-fr")


REAL = catalog.data_root()


@pytest.mark.skipif(not (REAL / "squad_dev").is_dir() or not (REAL / "xquad").is_dir(),
                    reason="the shared SQuAD/XQuAD data is not here")
def test_real_training_split_shares_nothing_with_xquad(monkeypatch):
    """On the real data (ASSETS.md: all 240 XQuAD paragraphs are SQuAD v1.1 dev paragraphs), checked from the
    catalog's own rows: no training paragraph is an XQuAD paragraph, no question id or text is an XQuAD one."""
    monkeypatch.setenv("DISTILL_DATA", str(REAL))
    squad, xquad = catalog.load("squad_dev").rows, catalog.load("xquad/en").rows
    context_of = dict(zip(squad["corpus"]["doc_id"], squad["corpus"]["text"]))
    held = {normalise(t) for t in xquad["corpus"]["text"]}
    held_questions = {normalise(t) for t in xquad["queries"]["text"]}
    assert len(held) == 240
    seen = 0
    for split in ("train", "dev"):
        rows = retrieval.load(f"reqa/squad/{split}")
        paragraphs = {d.rsplit("/", 1)[0] for d in rows["corpus"]["doc_id"]}
        assert not {normalise(context_of[p]) for p in paragraphs} & held
        assert not set(rows["queries"]["query_id"]) & set(xquad["queries"]["query_id"])
        assert not {normalise(t) for t in rows["queries"]["text"]} & held_questions
        seen += len(paragraphs)
    assert seen == len(squad["corpus"]) - 240  # every other paragraph is in train or dev
