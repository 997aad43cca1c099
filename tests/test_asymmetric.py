"""Asymmetric inputs (issue 17, item 5): a query prefix and a document prefix, from tokenisation to the
sentence-transformers export; and `distill cache` scoring with an off-the-shelf cross-encoder folder (item 3).

The tiny backbone's vocabulary is word-level, so the prefixes are words of it ("cat " for queries, "dog " for
documents): a prefix outside it would tokenise to [UNK] for both and could not tell the two apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pyarrow.parquet as pq
import pytest
import torch
from cli_args import student_args

from distill.cache import CacheError
from distill.cli import run
from distill.data import GroupDataModule, PairDataModule, tokenize
from distill.export import PROBES, ExportError
from distill.export import main as export
from students import BiEncoder
from teachers import CrossEncoder

QUERY, DOCUMENT = "cat ", "dog "


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_tokenize_gives_the_document_prefix_to_the_second_text_only(tiny_backbone: str):
    batch = {"text_a": ["a man runs."], "text_b": ["a man runs."]}
    apart = tokenize(batch, tiny_backbone, 32, joint=False, prefix=QUERY, document_prefix=DOCUMENT)
    same = tokenize(batch, tiny_backbone, 32, joint=False, prefix=QUERY)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    assert apart["a_input_ids"][0] == tok("cat a man runs.")["input_ids"]
    assert apart["b_input_ids"][0] == tok("dog a man runs.")["input_ids"]
    assert same["b_input_ids"][0] == tok("cat a man runs.")["input_ids"]
    joint = tokenize(batch, tiny_backbone, 32, joint=True, prefix=QUERY, document_prefix=DOCUMENT)
    assert joint["input_ids"][0] == tok("cat a man runs.", "dog a man runs.")["input_ids"]


def _group_file(path: Path) -> str:
    rows = ["text_a,text_b,group"] + [f"a man plays {w}.,a {w} is red.,g{i}" for i, w in enumerate(
        ("guitar", "piano", "song", "book")) for _ in range(2)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_group_candidates_are_documents_and_pair_splits_stay_queries(tiny_backbone: str, pair_files: dict[str, str],
                                                                     tmp_path: Path):
    """GroupDataModule tokenises its train candidates with the document prefix and its validation pairs (STS) with
    the query prefix on both sides; a PairDataModule keeps the query prefix unless `documents: true`."""
    spec = BiEncoder(tiny_backbone, prefix=QUERY, document_prefix=DOCUMENT).tokenization()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    groups = GroupDataModule(train=_group_file(tmp_path / "g.csv"), val=pair_files["dev"], n_negatives=1,
                             label_column=None, tokenization=spec)
    train, val = groups.build("train"), groups.build("val")
    assert train[0]["q_input_ids"] == tok("cat a man plays guitar.")["input_ids"]
    assert train[0]["c_input_ids"][0] == tok("dog a guitar is red.")["input_ids"]
    first = PairDataModule(val=pair_files["dev"], label_column=None).rows("val")[0]
    assert val[0]["b_input_ids"] == tok(QUERY + first["text_b"])["input_ids"]
    as_documents = PairDataModule(val=pair_files["dev"], label_column=None, documents=True,
                                  tokenization=spec).build("val")
    assert as_documents[0]["b_input_ids"] == tok(DOCUMENT + first["text_b"])["input_ids"]


def test_encode_as_document_uses_the_document_prefix(tiny_backbone: str):
    student = BiEncoder(tiny_backbone, prefix=QUERY, document_prefix=DOCUMENT)
    as_documents = BiEncoder(tiny_backbone, prefix=DOCUMENT)
    texts = ["a man plays guitar.", "the cat sits on the mat."]
    assert torch.allclose(student.encode(texts, document=True), as_documents.encode(texts), atol=1e-6)
    assert not torch.allclose(student.encode(texts), student.encode(texts, document=True), atol=1e-3)
    assert torch.equal(BiEncoder(tiny_backbone, prefix=QUERY).encode(texts, document=True),
                       BiEncoder(tiny_backbone, prefix=QUERY).encode(texts))  # none set: the query's


def test_export_carries_query_and_document_prompts(tiny_backbone: str, pair_files: dict[str, str], tmp_path: Path):
    """The exported folder's prompts are `{"query": prefix, "document": document_prefix}`: sentence-transformers'
    encode_query / encode_document equal the student's own encodings, as does distill's server."""
    from sentence_transformers import SentenceTransformer

    from distill import serving
    from distill.checkpoints import load_model

    out = tmp_path / "run"
    out.mkdir()
    (out / "overlay.yaml").write_text(f"model:\n  init_args:\n    student:\n      init_args: "
                                      f"{{prefix: '{QUERY}', document_prefix: '{DOCUMENT}'}}\n")
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *student_args(tiny_backbone, pair_files, out, None), "--config", str(out / "overlay.yaml"),
                   "--model.init_args.objectives.teacher_mse.init_args.weight=0", "--trainer.max_epochs=1",
                   "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.precision=32"])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    folder = export(ckpt, str(tmp_path / "export"))
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": QUERY, "document": DOCUMENT}
    _, student, _ = load_model(ckpt)
    st = SentenceTransformer(str(folder), device="cpu")
    queries, documents = student.encode(PROBES), student.encode(PROBES, document=True)
    assert torch.allclose(st.encode_query(PROBES, convert_to_tensor=True), queries, atol=1e-5)
    assert torch.allclose(st.encode_document(PROBES, convert_to_tensor=True), documents, atol=1e-5)
    server = serving.load(folder, "torch-fp32")
    assert torch.allclose(server.encode(PROBES, document=True), documents, atol=1e-5)
    assert torch.allclose(server.encode(PROBES), queries, atol=1e-5)


def test_a_teacher_with_a_document_prefix_is_not_exported_as_a_cross_encoder(tiny_backbone: str, tmp_path: Path):
    """sentence-transformers' CrossEncoder cannot put a prefix before the document: refused in one line, before
    anything is written."""
    from distill.export import export_teacher

    teacher = CrossEncoder(tiny_backbone, document_prefix=DOCUMENT)
    with pytest.raises(ExportError) as err:
        export_teacher(teacher, tmp_path / "t", {})
    assert "document_prefix" in one_line(err) and not (tmp_path / "t").exists()


def _classifier_folder(tiny_backbone: str, folder: Path) -> Path:
    teacher = CrossEncoder(tiny_backbone)
    teacher.model.save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(folder)
    return folder


def test_cache_scores_with_a_folder_teacher_without_a_checkpoint(tiny_backbone: str, pair_files: dict[str, str],
                                                                 tmp_path: Path):
    """`distill cache --teacher teachers.FolderCrossEncoder` needs no --ckpt_path: the manifest's fingerprint is the
    folder's content hash, and the scores are the folder model's own logits (the manifest's transform maps them)."""
    from teachers.folder import FolderCrossEncoder

    folder = _classifier_folder(tiny_backbone, tmp_path / "folder")
    out = tmp_path / "cache"
    args = ["cache", "--teacher", "teachers.FolderCrossEncoder", "--teacher.folder", str(folder),
            "--data", "distill.data.PairDataModule", "--data.train", pair_files["train"], "--data.label_range=[0, 5]",
            "--out", str(out), "--accelerator", "cpu"]
    with mock.patch("sys.argv", ["distill"]):
        run(args)
    manifest = json.loads((out / "manifest.json").read_text())
    teacher = FolderCrossEncoder(str(folder))
    assert manifest["teacher"]["checkpoint_sha256"] == teacher.content_sha256 and manifest["complete"]
    table = pq.read_table(sorted(out.glob("*.parquet"))[0]).to_pydict()
    rows = PairDataModule(train=pair_files["train"], label_range=(0, 5)).rows("train")
    first = rows[0]
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(folder)(first["text_a"], first["text_b"], return_tensors="pt")
    teacher.eval()
    with torch.no_grad():
        expected = teacher.model(**enc).logits[0, 0].item()
    index = table["pair_id"].index(first["pair_id"])
    assert abs(table["score"][index] - expected) < 1e-4 and manifest["teacher"]["score_transform"] == "sigmoid"


def test_cache_of_a_trained_teacher_without_a_checkpoint_is_refused(tiny_backbone: str, pair_files: dict[str, str],
                                                                    tmp_path: Path):
    from distill.cache import main as cache

    with pytest.raises(CacheError) as err:
        cache(CrossEncoder(tiny_backbone), PairDataModule(train=pair_files["train"]), out=str(tmp_path / "c"))
    assert "--ckpt_path" in one_line(err) and not (tmp_path / "c").exists()


def test_a_group_file_whose_candidates_have_no_cached_score_is_one_line(tiny_backbone: str, score_cache: Path,
                                                                        tmp_path: Path):
    """Groups are joined to the cache like pairs: candidates the cache never scored are named (count and first
    pair) with the fix, before any step."""
    spec = BiEncoder(tiny_backbone).tokenization()
    groups = GroupDataModule(train=_group_file(tmp_path / "g.csv"), n_negatives=1, label_column=None,
                             cache_dir=str(score_cache), tokenization=spec)
    with pytest.raises(CacheError) as err:
        groups.build("train")
    assert one_line(err).startswith("8 of 8 training pairs have no teacher score") and "distill cache" in str(err.value)


def test_a_cross_encoder_document_prefix_is_used_in_training_as_in_caching(tiny_backbone: str,
                                                                           pair_files: dict[str, str]):
    """A teacher's second text is its document wherever it is read: the training data module tokenises it with the
    document prefix exactly as `distill cache` and `distill mine` do (teacher.tokenization() as it is)."""
    from transformers import AutoTokenizer

    spec = CrossEncoder(tiny_backbone, prefix=QUERY, document_prefix=DOCUMENT).tokenization()
    rows = PairDataModule(val=pair_files["dev"], label_column=None, tokenization=spec).build("val")
    first = PairDataModule(val=pair_files["dev"], label_column=None).rows("val")[0]
    as_cached = tokenize({"text_a": [first["text_a"]], "text_b": [first["text_b"]]}, **spec)
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    assert rows[0]["input_ids"] == as_cached["input_ids"][0] == tok(QUERY + first["text_a"],
                                                                   DOCUMENT + first["text_b"])["input_ids"]
