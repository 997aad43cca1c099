"""The off-the-shelf teacher (teachers.FolderCrossEncoder) on tiny random folders: the scores `distill cache`'s
pipeline gets from it equal the folder's own, a content fingerprint, and folders it must refuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.data import PairCollator, load_tokenizer, make_pair_id, tokenize
from teachers import FolderCrossEncoder
from teachers.folder import TeacherFolderError, content_sha256

PAIRS = [("a man plays guitar.", "a woman plays piano."), ("the dog runs in the park.", "a cat sits on the mat."),
         ("a child reads a book.", "a child reads a book.")]


@pytest.fixture(scope="module")
def classifier_folder(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sequence-classification folder with a trained-looking (seeded, non-zero) regression head."""
    folder = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    torch.nn.init.normal_(model.classifier.weight, std=30.0)  # the pooled outputs differ little
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(folder)
    return folder


def direct_logits(folder: Path, max_length: int) -> torch.Tensor:
    """The folder's own scores: transformers alone, pairs encoded jointly."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, truncation=True, max_length=max_length,
              return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.squeeze(-1)


def cache_scores(teacher: FolderCrossEncoder) -> torch.Tensor:
    """What `distill cache` stores: rows tokenised by `teacher.tokenization()`, `Trainer.predict`, `predict_step`."""
    rows = Dataset.from_dict({"pair_id": [make_pair_id(a, b) for a, b in PAIRS], "text_a": [a for a, _ in PAIRS],
                              "text_b": [b for _, b in PAIRS]})
    spec = teacher.tokenization()
    tokenised = rows.map(tokenize, batched=True, fn_kwargs=spec)
    loader = DataLoader(tokenised, batch_size=2,
                        collate_fn=PairCollator(load_tokenizer(spec["tokenizer"]).pad_token_id or 0))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(teacher, dataloaders=loader)
    return torch.cat([o["score"] for o in out])


def test_scores_through_the_cache_pipeline_are_the_folders_own(classifier_folder):
    """Raw logits (what the cache stores; the manifest's sigmoid maps them to [0, 1]) equal transformers' own
    forward on the folder: the head is the folder's, not a fresh one."""
    teacher = FolderCrossEncoder(str(classifier_folder))
    assert teacher.score_transform == "sigmoid" and teacher.hparams.num_labels == 1
    assert teacher.hparams.max_length == 128  # the tiny model's positions (its tokenizer records no length)
    want = direct_logits(classifier_folder, 128)
    assert want.std() > 1e-2  # distinct scores, so a wrong pairing or a fresh head cannot match
    torch.testing.assert_close(cache_scores(teacher), want, atol=1e-5, rtol=1e-4)


def test_a_sentence_transformers_cross_encoder_folder(classifier_folder, tmp_path):
    """`distill export`'s teacher output is a sentence-transformers CrossEncoder folder: its max_length is read
    back (sentence-transformers records it as the tokenizer's model_max_length) and its scores are the model's."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "st"
    st.CrossEncoder(str(classifier_folder), device="cpu", max_length=8,
                    activation_fn=torch.nn.Sigmoid()).save_pretrained(str(folder))
    teacher = FolderCrossEncoder(str(folder))
    assert teacher.hparams.max_length == 8
    torch.testing.assert_close(cache_scores(teacher), direct_logits(classifier_folder, 8), atol=1e-5, rtol=1e-4)
    predicted = torch.as_tensor(st.CrossEncoder(str(folder), device="cpu").predict(PAIRS))
    torch.testing.assert_close(torch.sigmoid(cache_scores(teacher)), predicted.float(), atol=1e-5, rtol=1e-4)


def test_fingerprint_is_the_folders_content(classifier_folder, tmp_path):
    """A copy elsewhere has the same fingerprint (content, not location); one changed byte gives another."""
    copy = tmp_path / "copy"
    shutil.copytree(classifier_folder, copy)
    teacher = FolderCrossEncoder(str(copy))
    assert teacher.fingerprint_source() == {"checkpoint": str(copy),
                                            "checkpoint_sha256": content_sha256(classifier_folder)}
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "label2id": {"LABEL_0": 0, "x": 1}}))
    assert content_sha256(copy) != content_sha256(classifier_folder)
    (copy / "config.json").write_text(json.dumps(config))  # a new file counts too
    (copy / "notes.txt").write_text("x")
    assert content_sha256(copy) != content_sha256(classifier_folder)


def test_a_folder_that_is_not_a_sequence_classifier_is_one_line(tiny_backbone):
    """A bare encoder (e.g. a student export) would get a fresh random head and score at random."""
    with pytest.raises(TeacherFolderError, match=r"holds BertModel, not a sequence-classification model.*cross-enc"):
        FolderCrossEncoder(tiny_backbone)


def test_a_classifier_config_without_head_weights_is_one_line(tiny_backbone, tmp_path):
    """The config claims a classifier but the weights are a bare encoder's: refused, naming the missing weight."""
    folder = tmp_path / "headless"
    shutil.copytree(tiny_backbone, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(TeacherFolderError, match=r"no weights for the classifier head \('classifier\.(weight|bias)'"):
        FolderCrossEncoder(str(folder))


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(TeacherFolderError, match=r"does not exist; give a transformers sequence-classification"):
        FolderCrossEncoder(str(tmp_path / "nowhere"))
