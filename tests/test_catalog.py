"""The data catalog: resolution order (folder, then Hub), each layout from a tiny folder the test writes, the
offline error, bad input; the tokenised-row cache's gold key and truncated-file recovery."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from unittest import mock

import pytest
from datasets import Dataset

from distill import catalog
from distill.data import DataError, PairDataModule, read_pairs
from distill.languages import iso

PAIRS = [("one small cat.", "a cat sits.", 4.5), ('she said "hi".', "hello there.", 1.0), ("x y.", "z w.", 0.0)]


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data folder as DISTILL_DATA; the catalog's memo is cleared so each test reads afresh."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("DISTILL_DATA", str(root))
    catalog._load.cache_clear()
    yield root
    catalog._load.cache_clear()


def write_stsb(root: Path) -> None:
    folder = root / "stsbenchmark"
    folder.mkdir()
    for split in catalog.SPLITS:
        # STS-B's archive layout: 7 tab-separated fields, literal quotes, sometimes extra fields after s2
        lines = [f"genre\tfile\t2012\t{i}\t{score}\t{a}\t{b}" + ("\textra\tfields" if i == 2 else "")
                 for i, (a, b, score) in enumerate(PAIRS)]
        (folder / f"sts-{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_local_folder_comes_first_and_the_hub_is_not_asked(data_dir: Path) -> None:
    write_stsb(data_dir)
    with mock.patch.object(catalog, "_load_hub", side_effect=AssertionError("the Hub must not be asked")):
        entry = catalog.load("stsb/dev")
    assert entry.origin == str(data_dir / "stsbenchmark") and entry.label_range == (0.0, 5.0)
    assert entry.rows["text_a"] == [a for a, _, _ in PAIRS] and entry.rows["label"] == [s for _, _, s in PAIRS]
    rows, label_range = read_pairs("stsb/dev")  # quotes stay literal, extra fields are ignored
    assert rows["text_b"][1] == "hello there." and rows["text_a"][1] == 'she said "hi".'
    assert rows["gold"] == pytest.approx([0.9, 0.2, 0.0]) and "licence" not in rows.column_names
    assert "CC BY-SA 4.0" in entry.licence


def test_without_a_folder_the_hub_id_is_loaded_and_its_columns_mapped(data_dir: Path) -> None:
    calls = []

    def hub(hub_id: str, config: str | None, split: str) -> Dataset:
        calls.append((hub_id, config, split))
        return Dataset.from_dict({"sentence1": ["a b.", "c d."], "sentence2": ["e f.", "g h."],
                                  "score": [0.2, 1.0], "similarity_score": [1.0, 5.0]})

    with mock.patch.object(catalog, "_load_hub", side_effect=hub):
        stsb = catalog.load("stsb/dev")
        multi = catalog.load("stsb_multi_mt/de/test")
    assert calls == [("sentence-transformers/stsb", None, "validation"), ("PhilipMay/stsb_multi_mt", "de", "test")]
    assert stsb.origin == "hf:sentence-transformers/stsb" and stsb.label_range == (0.0, 1.0)  # the Hub's scale
    assert stsb.rows["label"] == [0.2, 1.0] and multi.rows["label"] == [1.0, 5.0]
    assert multi.rows["text_a"] == ["a b.", "c d."] and multi.label_range == (0.0, 5.0)


def test_hub_squad_rows_become_articles_paragraphs_and_questions(data_dir: Path) -> None:
    flat = Dataset.from_list([
        {"id": "q1", "title": "T", "context": "P one. Two.", "question": "Which?",
         "answers": {"text": ["one"], "answer_start": [2]}},
        {"id": "q2", "title": "T", "context": "P one. Two.", "question": "What?",
         "answers": {"text": ["Two"], "answer_start": [7]}},
        {"id": "q3", "title": "T", "context": "Another.", "question": "Else?",
         "answers": {"text": ["Another"], "answer_start": [0]}}])
    with mock.patch.object(catalog, "_load_hub", return_value=flat) as hub:
        entry = catalog.load("xquad/de")
    hub.assert_called_once_with("google/xquad", "xquad.de", "validation")
    assert entry.rows["corpus"]["doc_id"] == ["T/0", "T/1"]
    assert entry.rows["qrels"]["doc_id"] == ["T/0", "T/0", "T/1"] and entry.rows["queries"]["answers"][1] == ["Two"]


def test_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTILL_DATA", raising=False)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    checkout = Path(catalog.__file__).resolve().parents[2] / "shared" / "data"
    expected = checkout if checkout.is_dir() else Path.home() / ".cache" / "distill" / "data"
    assert catalog.data_root() == expected  # no ../shared/data beside the current folder
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert catalog.data_root() == (tmp_path / "shared" / "data").resolve()  # beside the current folder wins
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "mine"))
    assert catalog.data_root() == tmp_path / "mine"  # the variable wins over both


def test_offline_with_no_folder_is_one_line_naming_folder_hub_id_and_variable(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(catalog.CatalogError) as err:
        catalog.load("tatoeba/deu")
    message = str(err.value)
    assert "\n" not in message and str(data_dir / "tatoeba") in message
    assert "mteb/tatoeba-bitext-mining" in message and f"DISTILL_DATA={data_dir}" in message
    with pytest.raises(DataError, match=r"^hf:nobody/nothing:train: the Hub set nobody/nothing could not be loaded"):
        read_pairs("hf:nobody/nothing:train")


def test_parallel_layouts(data_dir: Path) -> None:
    (data_dir / "tatoeba").mkdir()
    (data_dir / "tatoeba" / "tatoeba.deu-eng.deu").write_text("Hallo.\nKatze.\n", encoding="utf-8")
    (data_dir / "tatoeba" / "tatoeba.deu-eng.eng").write_text("Hello.\nCat.\n", encoding="utf-8")
    pair = data_dir / "tatoeba_challenge" / "eng-fra"
    pair.mkdir(parents=True)
    (pair / "tatoeba-test-v2021-08-07.eng").write_text("Dog.\n", encoding="utf-8")
    (pair / "tatoeba-test-v2021-08-07.fra").write_text("Chien.\n", encoding="utf-8")
    for split in ("dev", "devtest"):
        (data_dir / "flores200" / split).mkdir(parents=True)
        (data_dir / "flores200" / split / f"eng_Latn.{split}").write_text(f"One {split}.\nTwo.\n", encoding="utf-8")
        (data_dir / "flores200" / split / f"zho_Hans.{split}").write_text(f"一 {split}。\n二。\n", encoding="utf-8")
    tatoeba = catalog.load("tatoeba/deu").rows
    assert tatoeba.to_dict() == {"source": ["Hello.", "Cat."], "translation": ["Hallo.", "Katze."],
                                 "lang": ["deu", "deu"]}
    assert catalog.load("tatoeba_challenge/fra").rows[0] == {"source": "Dog.", "translation": "Chien.", "lang": "fra"}
    flores = catalog.load("flores200/zho_Hans/devtest").rows
    assert flores["source"] == ["One devtest.", "Two."] and flores["translation"][0] == "一 devtest。"
    assert [iso(c) for c in ("deu", "deu_Latn", "cmn", "zho_Hans", "arb_Arab", "ara", "fra", "yue")] == \
        ["de", "de", "zh", "zh", "ar", "ar", "fr", "yue"]


def test_retrieval_layouts(data_dir: Path) -> None:
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Alpha beta. Gamma.", "qas": [{"id": "q1", "question": "Which?",
                                                   "answers": [{"text": "Gamma", "answer_start": 12}]}]}]}]}
    for folder, name in (("xquad", "xquad.en.json"), ("squad_dev", "dev-v1.1.reconstructed.json")):
        (data_dir / folder).mkdir()
        (data_dir / folder / name).write_text(json.dumps(squad), encoding="utf-8")
    for name in ("xquad/en", "squad_dev"):
        rows = catalog.load(name).rows
        assert rows["queries"][0] == {"query_id": "q1", "text": "Which?", "answers": ["Gamma"], "answer_starts": [12]}
        assert rows["corpus"][0] == {"doc_id": "T/0", "title": "T", "text": "Alpha beta. Gamma."}
        assert rows["qrels"][0] == {"query_id": "q1", "doc_id": "T/0", "relevance": 1}
    beir = data_dir / "beir_scifact"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "10", "title": "A", "text": "a."}\n{"_id": "11", "title": "B", '
                                       '"text": "b."}\n', encoding="utf-8")
    (beir / "queries.jsonl").write_text('{"_id": "1", "text": "q one"}\n{"_id": "2", "text": "q two"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n2\t11\t1\n")
    rows = catalog.load("scifact/test").rows
    assert rows["queries"].to_dict() == {"query_id": ["2"], "text": ["q two"]}  # only the judged queries
    assert rows["corpus"]["doc_id"] == ["10", "11"] and rows["qrels"][0] == {"query_id": "2", "doc_id": "11",
                                                                                "relevance": 1}


def test_bad_names_and_folders_are_one_line(data_dir: Path) -> None:
    with pytest.raises(catalog.CatalogError, match=r"unknown data set 'stsb/trian'; close matches: stsb/train"):
        catalog.load("stsb/trian")
    with pytest.raises(DataError, match=r"unknown data set 'stsb_multi_mt/xx/test'; close matches: .*stsb_multi_mt/"):
        read_pairs("stsb_multi_mt/xx/test")
    write_stsb(data_dir)
    (data_dir / "stsbenchmark" / "sts-test.csv").unlink()
    with pytest.raises(catalog.CatalogError, match=r"sts-test.csv is missing; the folder .*stsbenchmark is incomplete"):
        catalog.load("stsb/test")
    (data_dir / "stsbenchmark" / "sts-test.csv").write_text("a,b,3.0\n", encoding="utf-8")  # CSV, not the archive
    with pytest.raises(catalog.CatalogError, match=r"sts-test.csv, line 1: 1 tab-separated fields, expected >= 7"):
        catalog.load("stsb/test")
    with pytest.raises(DataError, match="xquad/en is a retrieval set, not pairs"):
        (data_dir / "xquad").mkdir()
        (data_dir / "xquad" / "xquad.en.json").write_text('{"data": []}')
        read_pairs("xquad/en")


def _datamodule(tmp_path: Path, tiny_backbone: str, label_range: list[float]) -> PairDataModule:
    path = tmp_path / "pairs.csv"
    rows = [("a man plays.", "a dog runs.", 4.0), ("the cat.", "a car.", 1.0)]
    path.write_text("text_a,text_b,label\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    dm = PairDataModule(train=str(path), label_range=label_range)
    spec = {"tokenizer": tiny_backbone, "max_length": 16, "joint": False, "prefix": ""}
    dm._tokenization = lambda: spec  # what the model would say; no trainer needed for the tokenised rows
    return dm


def test_a_new_label_range_is_a_new_tokenised_cache(tmp_path: Path, tiny_backbone: str) -> None:
    """The tokenised rows carry `gold`, derived from label_range: a changed range must not reload old gold."""
    first, _ = _datamodule(tmp_path, tiny_backbone, [0, 5])._tokenised("train")
    second, _ = _datamodule(tmp_path, tiny_backbone, [0, 10])._tokenised("train")
    assert first["gold"] == pytest.approx([0.8, 0.2]) and second["gold"] == pytest.approx([0.4, 0.1])


def test_a_truncated_tokenised_cache_is_remade_with_a_warning_naming_it(tmp_path: Path, tiny_backbone: str) -> None:
    dm = _datamodule(tmp_path, tiny_backbone, [0, 5])
    rows, _ = dm._tokenised("train")
    files = [Path(f["filename"]) for f in rows.cache_files]
    expected = (list(rows["a_input_ids"]), list(rows["gold"]))  # read before the file under this memory map is cut
    assert files
    files[0].write_bytes(files[0].read_bytes()[:200])  # cut short, as a kill mid-write would leave it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, _ = _datamodule(tmp_path, tiny_backbone, [0, 5])._tokenised("train")
    assert any(str(files[0]) in str(w.message) for w in caught)
    assert (list(again["a_input_ids"]), list(again["gold"])) == expected


def test_a_non_editable_install_finds_the_data_and_the_quickstart_configs(tmp_path: Path) -> None:
    """`pip install .` copies the package into site-packages: data and configs are found through the source
    folder pip recorded (direct_url.json), not beside the copied package."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(root)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_DATA"} | {"PYTHONPATH": str(target)}
    probe = ("import distill, distill.quickstart as q, distill.catalog as c; "
             "print(distill.__file__); print(q._configs()); print(c.data_root())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0].startswith(str(target))  # the copied package, not the checkout
    assert out[1] == str(root / "configs") and out[2] == str(catalog.data_root())


def test_model_cards_name_the_training_data_and_its_licence(tmp_path: Path) -> None:
    """The card's data section comes from the checkpoint's datamodule arguments, not a fixed string."""
    from distill import export

    data = export.training_data({"train": ["stsb/train", str(tmp_path / "mine.csv")]})
    assert data == [{"source": "stsb/train", "licence": catalog.CATALOG["stsb"].licence},
                    {"source": str(tmp_path / "mine.csv"), "licence": f"{tmp_path / 'mine.csv'}: a local file; its "
                                                                      f"own terms apply"}]
    multi = export.training_data({"languages": ["en", "de"], "train": None})
    assert [d["source"] for d in multi] == ["stsb_multi_mt/en/train", "stsb_multi_mt/de/train"]
    export.write_card(tmp_path, {"kind": "teacher", "training_data": data, "checks": {}, "files": {}})
    card = (tmp_path / "README.md").read_text()
    assert "| `stsb/train` | STS Benchmark: scores CC BY-SA 4.0" in card and "bundled" not in card


def test_texts_of_a_set_are_both_sides_and_retrieval_sets_are_refused(data_dir: Path) -> None:
    """The sentence pool of `distill mine` and the corpus of `distill trim` when given a catalog name."""
    write_stsb(data_dir)
    (data_dir / "tatoeba").mkdir()
    (data_dir / "tatoeba" / "tatoeba.deu-eng.deu").write_text("Hallo.\n", encoding="utf-8")
    (data_dir / "tatoeba" / "tatoeba.deu-eng.eng").write_text("Hello.\n", encoding="utf-8")
    assert catalog.texts("stsb/train") == [a for a, _, _ in PAIRS] + [b for _, b, _ in PAIRS]
    assert catalog.texts("tatoeba/deu") == ["Hello.", "Hallo."]
    (data_dir / "xquad").mkdir()
    (data_dir / "xquad" / "xquad.en.json").write_text('{"data": []}')
    with pytest.raises(catalog.CatalogError, match="xquad/en is a retrieval set; give pairs, parallel text or a"):
        catalog.texts("xquad/en")
