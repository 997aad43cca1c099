"""Teacher and student modules, objectives, score transforms, DSE head persistence."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from distill.cache import apply_transform
from distill.losses import ScoreRegression
from distill.module import DistillModule
from students import BiEncoder
from teachers import CrossEncoder


@pytest.fixture(scope="module")
def student(tiny_backbone: str) -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder(backbone=tiny_backbone, dse_head=True, dse_hidden=16)


def test_score_transforms_map_to_the_target_scale():
    """Raw teacher outputs become targets on [0, 1]: sigmoid of logits, affine from a label range."""
    raw = np.array([-2.0, 0.0, 2.0], dtype=np.float32)
    assert apply_transform(raw, "sigmoid") == pytest.approx([0.1192, 0.5, 0.8808], abs=1e-4)
    assert apply_transform(np.array([0.0, 2.5, 5.0]), "affine-from-label_range", [0, 5]) == pytest.approx([0, .5, 1])
    assert apply_transform(raw, "identity").tolist() == raw.tolist()
    with pytest.raises(ValueError, match="unknown score_transform"):
        apply_transform(raw, "softplus")


def test_score_regression_value_and_validation():
    """The DSE term is the plain MSE; a narrower target tensor must not broadcast into a plausible loss."""
    g = torch.Generator().manual_seed(0)
    scores, targets = torch.rand(8, generator=g), torch.rand(8, generator=g)
    assert ScoreRegression()(scores, targets).item() == pytest.approx(((scores - targets) ** 2).mean().item())
    with pytest.raises(ValueError, match="shape"):
        ScoreRegression()(scores, targets[:4])  # would broadcast silently with a plain MSE
    for weight in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            ScoreRegression(weight=weight)
    with pytest.raises(ValueError, match="target"):
        ScoreRegression(target="labels")


def test_dse_head_saved_and_loaded_with_the_student(student: BiEncoder, tmp_path):
    """A student folder reloads with its options and DSE head: same embeddings and the same pair scores."""
    texts = ["a man plays guitar.", "the cat sits on the mat.", "a dog runs in the park."]
    student.save_pretrained(tmp_path / "s")
    again = BiEncoder.from_pretrained(tmp_path / "s")
    assert again.config == student.config and again.modes == ("cosine", "dse")
    u, v = student.encode(texts), again.encode(texts)
    assert torch.allclose(u, v, atol=1e-6)
    assert torch.allclose(student.scores(u[:2], u[1:])["dse"], again.scores(v[:2], v[1:])["dse"], atol=1e-6)
    assert torch.allclose(u.norm(dim=-1), torch.ones(3), atol=1e-5)  # normalize=True


def test_student_pooling_and_prefix(tiny_backbone):
    """cls pooling differs from mean; a prefix changes the input and is kept in the tokenization spec."""
    torch.manual_seed(0)
    mean = BiEncoder(backbone=tiny_backbone, normalize=False)
    cls = copy.deepcopy(mean)
    cls.config["pooling"] = "cls"
    text = ["a man plays guitar."]
    assert not torch.allclose(mean.encode(text), cls.encode(text))
    prefixed = copy.deepcopy(mean)
    prefixed.config["prefix"] = "the "
    assert not torch.allclose(mean.encode(text), prefixed.encode(text))
    assert prefixed.tokenization()["prefix"] == "the " and not prefixed.tokenization()["joint"]
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(backbone=tiny_backbone, pooling="max")


def test_encode_order_does_not_change_embeddings(student):
    """encode sorts by length inside; the rows still come back in input order."""
    texts = ["a man.", "the cat sits on the mat with a dog.", "a big red car."]
    full = student.encode(texts, batch_size=2)
    single = torch.cat([student.encode([t]) for t in texts])
    assert torch.allclose(full, single, atol=1e-5)


def test_distill_module_learns_from_teacher_scores(student, pair_files, score_cache):
    """A training batch of the datamodule joined with a real score cache carries each pair's own cached score
    (the join, checked by pair_id on a shuffled, length-grouped batch), and a few optimiser steps on the
    teacher term lower it: the loss reaches the student's weights (a detached loss would leave it flat)."""
    from types import SimpleNamespace

    from distill.cache import ScoreCache
    from distill.data import PairDataModule

    module = DistillModule(copy.deepcopy(student), {"teacher_mse": ScoreRegression(target="teacher")}, lr=1e-2)
    data = PairDataModule(train=pair_files["train"], label_range=(0, 5), cache_dir=str(score_cache), batch_size=8)
    data.trainer = SimpleNamespace(lightning_module=module)  # what the datamodule asks the tokenisation of
    data.datasets["train"] = data.build("train")
    batch = next(iter(data.train_dataloader()))
    cached = ScoreCache(score_cache).scores()  # pair_id -> score on the target scale
    assert len(set(batch["pair_id"])) == 8 and len(set(cached.values())) > 8  # distinct scores: a mix-up shows
    assert batch["score"].tolist() == pytest.approx([cached[p] for p in batch["pair_id"]], abs=1e-6)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.log = lambda *args, **kwargs: None
    module.eval()  # dropout off: the comparison is about the gradient, not noise
    losses = _steps(module, batch, opt)
    assert min(losses) < 0.5 * losses[0], losses


def test_all_zero_weights_are_refused(student):
    """A config whose every weight is 0 would train nothing at a loss of 0."""
    with pytest.raises(ValueError, match="weight 0"):
        DistillModule(copy.deepcopy(student), {"t": ScoreRegression(weight=0)})


def test_classification_teacher_trains_on_tiny_data(tiny_backbone):
    """A classification head (num_labels=3) gives (batch, 3) logits, cross-entropy on integer labels, and a few
    optimiser steps lower that loss and change the weights, while lr = 0 (the control) changes neither."""
    torch.manual_seed(0)
    teacher = CrossEncoder(backbone=tiny_backbone, num_labels=3)
    assert teacher.score_transform == "identity"
    tok = teacher.tokenization()
    assert tok["joint"]
    from distill.data import load_tokenizer

    enc = load_tokenizer(tok["tokenizer"])(["a man.", "a cat."], ["a dog.", "a cat."], padding=True,
                                           return_tensors="pt")
    batch = {**enc, "pair_id": ["1", "2"], "label": torch.tensor([0.0, 2.0])}
    teacher.log = lambda *args, **kwargs: None
    teacher.eval()  # dropout off, so two forward passes agree
    logits = teacher(batch)
    assert logits.shape == (2, 3)
    loss = teacher.training_step(batch, 0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).item(),
                                        rel=1e-4)
    assert teacher.predict_step(batch, 0)["score"].shape == (2, 3)
    start = copy.deepcopy(teacher.state_dict())

    def train(lr: float) -> tuple[list[float], bool]:
        teacher.load_state_dict(start)
        losses = _steps(teacher, batch, torch.optim.AdamW(teacher.parameters(), lr=lr))
        return losses, any(not torch.equal(start[k], v) for k, v in teacher.state_dict().items())

    losses, moved = train(1e-2)
    assert moved and losses[-1] < 0.7 * losses[0], losses  # measured 1.10 -> 0.68
    losses, moved = train(0.0)
    assert not moved and losses[-1] == pytest.approx(losses[0], abs=1e-6), losses


def test_max_length_beyond_the_backbone_is_refused(tiny_backbone):
    """The tiny backbone has 128 positions: 256 would crash at the first long batch, so it fails at construction."""
    with pytest.raises(ValueError, match="max_length=256 exceeds the backbone's 128 positions"):
        CrossEncoder(backbone=tiny_backbone, max_length=256)
    with pytest.raises(ValueError, match="max_seq_length=200 exceeds"):
        BiEncoder(backbone=tiny_backbone, max_seq_length=200)


def test_the_tiny_test_tokenizer_knows_its_words(tiny_backbone):
    """Every fixture word has its own id: tests on tiny models see words, not only sentence lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    ids = tok("a man plays guitar .", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(set(ids)) == 5


def _steps(module: torch.nn.Module, batch: dict, opt: torch.optim.Optimizer, n: int = 10) -> list[float]:
    """`n` optimiser steps of `module.training_step` on one batch; the loss before each step."""
    losses = []
    for _ in range(n):
        loss = module.training_step(batch, 0)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses
