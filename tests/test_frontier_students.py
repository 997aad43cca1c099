"""The speed/accuracy frontier's students: shallower (`keep_layers`), 2D Matryoshka points, static token tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_args import student_args

from distill.cli import run
from distill.export import PROBES, ExportError
from distill.export import main as export
from distill.losses import Matryoshka2D, ScoreRegression
from distill.module import DistillModule
from students import BiEncoder, StaticStudent

KEEP = "model.init_args.student.init_args.keep_layers"


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


# --- shallower students -------------------------------------------------------------------------------------------

def test_keep_layers_keeps_the_named_layers_weights(tiny_backbone: str, tmp_path: Path):
    """A subset that silently kept layer 0 instead of layer 1 (or reset the weights) would train a different model
    than the one named, at a plausible loss."""
    from transformers import AutoModel

    full = AutoModel.from_pretrained(tiny_backbone).state_dict()
    student = BiEncoder(tiny_backbone, keep_layers=[1])
    kept = student.encoder.state_dict()
    assert student.depth == 1 and not any(k.startswith("encoder.layer.1.") for k in kept)
    layer_keys = [k for k in kept if k.startswith("encoder.layer.0.")]
    assert layer_keys and all(torch.equal(kept[k], full[k.replace("layer.0.", "layer.1.")]) for k in layer_keys)
    assert not torch.equal(kept[layer_keys[0]], full[layer_keys[0]])  # layer 0 of the backbone differs: not kept
    assert torch.equal(kept["embeddings.word_embeddings.weight"], full["embeddings.word_embeddings.weight"])

    student.save_pretrained(tmp_path / "s")  # a folder AutoModel reads as a 1-layer BERT; from_pretrained rebuilds it
    assert AutoModel.from_pretrained(tmp_path / "s").config.num_hidden_layers == 1
    assert json.loads((tmp_path / "s" / "distill_student.json").read_text())["keep_layers"] == [1]
    student.eval()
    assert torch.allclose(BiEncoder.from_pretrained(tmp_path / "s").encode(PROBES), student.encode(PROBES), atol=1e-6)


@pytest.mark.parametrize(("keep", "says"), [([], "is empty"), ([0, 2], "outside 0..1"), ([1, 0], "increasing")])
def test_keep_layers_out_of_range_or_empty_is_one_line(tiny_backbone: str, keep: list[int], says: str):
    """An out-of-range index would raise IndexError deep in torch; an empty list would build a model of no layers."""
    with pytest.raises(ValueError) as err:
        BiEncoder(tiny_backbone, keep_layers=keep)
    assert KEEP in one_line(err) and says in str(err.value) and "leave it unset" in str(err.value)


# --- 2D Matryoshka ------------------------------------------------------------------------------------------------

def test_matryoshka_is_the_weighted_sum_of_the_objective_at_each_point():
    """Hand-computed: MSE([0.5, 1], [0, 1]) = 0.125 and MSE([0, 0.5], [0, 1]) = 0.125, weighted 1 and 0.5."""
    loss = Matryoshka2D(ScoreRegression(target="gold"), points=[[None, None], [1, 4]], point_weights=[1.0, 0.5])
    target = torch.tensor([0.0, 1.0])
    got = loss([(torch.tensor([0.5, 1.0]), target), (torch.tensor([0.0, 0.5]), target)])
    assert got.item() == pytest.approx(0.125 + 0.5 * 0.125)
    assert loss.inputs == "pair_scores" and loss.target == "gold"


def test_training_step_applies_the_objective_at_each_layer_and_dim(tiny_backbone: str):
    """The module must feed each point its own layer's pooled, cut, renormalised embeddings: the sum below is built
    from transformers' hidden states by hand, not by the student's code."""
    torch.manual_seed(0)
    student = BiEncoder(tiny_backbone).eval()  # eval: no dropout, so the hand computation sees the same forward
    objectives = {"mat": Matryoshka2D(ScoreRegression(target="gold"), points=[[1, 8], [None, None]],
                                      point_weights=[0.5, 1.0]),
                  "plain": ScoreRegression(target="gold", weight=2.0)}
    module = DistillModule(student, objectives).eval()
    tok = student.tokenizer
    a, b = ["a man plays guitar.", "the dog runs."], ["a woman plays piano.", "a cat sits on the mat."]
    both = tok(a + b, padding=True, return_tensors="pt")  # one width for both sides, as the collator pads them
    ea, eb = ({k: v[:2] for k, v in both.items()}, {k: v[2:] for k, v in both.items()})
    gold = torch.tensor([0.4, 0.1])
    batch = {"a_input_ids": ea["input_ids"], "a_attention_mask": ea["attention_mask"],
             "b_input_ids": eb["input_ids"], "b_attention_mask": eb["attention_mask"], "gold": gold,
             "pair_id": ["p0", "p1"]}
    with torch.no_grad():
        total = module.training_step(batch, 0)

        def cos_at(layer: int, dims: int) -> torch.Tensor:
            sides = []
            for enc in (ea, eb):
                states = student.encoder(**enc, output_hidden_states=True).hidden_states
                sides.append(F.normalize(mean_pool(states[layer], enc["attention_mask"])[:, :dims], dim=-1))
            return (sides[0] * sides[1]).sum(-1)

        def mse(x: torch.Tensor) -> float:
            return ((x - gold) ** 2).mean().item()

        expected = 0.5 * mse(cos_at(1, 8)) + 1.0 * mse(cos_at(2, 32)) + 2.0 * mse(cos_at(2, 32))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert mse(cos_at(1, 8)) != pytest.approx(mse(cos_at(2, 32)), rel=1e-3)  # the points do differ


def test_validation_logs_each_matryoshka_points_own_spearman(tiny_backbone: str):
    """`val/spearman_cosine/<layers>x<dims>` is the Spearman of that point's cosines (built here from transformers'
    hidden states), not the full student's: a point's weights are tuned on it."""
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    student = BiEncoder(tiny_backbone).eval()
    module = DistillModule(student, {"mat": Matryoshka2D(ScoreRegression(target="gold"),
                                                         points=[[1, 8], [None, None]])}).eval()
    a = ["a man plays guitar.", "the dog runs.", "rain falls on the town.", "she reads a book.", "two kids swim.",
         "the market opens early.", "a train leaves the station.", "birds sing at dawn.", "he fixes the old car.",
         "the soup is too hot."]
    b = ["a woman plays piano.", "a cat sits on the mat.", "the city is wet.", "he writes a letter.", "a boy dives.",
         "stocks fell sharply today.", "the bus is late again.", "a bird flies away.", "she paints a fence.",
         "dinner is served cold."]
    tok = student.tokenizer(a + b, padding=True, return_tensors="pt")
    n = len(a)
    batch = {"a_input_ids": tok["input_ids"][:n], "a_attention_mask": tok["attention_mask"][:n],
             "b_input_ids": tok["input_ids"][n:], "b_attention_mask": tok["attention_mask"][n:],
             "gold": torch.tensor([0.9, 0.1, 0.7, 0.3, 0.5, 0.2, 0.6, 0.8, 0.0, 0.4]),
             "pair_id": [f"p{i}" for i in range(n)]}
    logged: dict[str, float] = {}
    with torch.no_grad(), mock.patch.object(module, "log", lambda k, v, **_: logged.__setitem__(k, float(v))), \
            mock.patch.object(module, "log_dict", lambda d, **_: logged.update({k: float(v) for k, v in d.items()})):
        module.validation_step(batch, 0)
        module.on_validation_epoch_end()
        states = student.encoder(**tok, output_hidden_states=True).hidden_states

    def spearman_at(layer: int, dims: int) -> float:
        emb = F.normalize(mean_pool(states[layer], tok["attention_mask"])[:, :dims], dim=-1)
        return float(spearmanr((emb[:n] * emb[n:]).sum(-1).numpy(), batch["gold"].numpy()).statistic)

    assert logged["val/spearman_cosine/1x8"] == pytest.approx(spearman_at(1, 8), abs=1e-5)
    assert logged["val/spearman_cosine/2x32"] == pytest.approx(spearman_at(2, 32), abs=1e-5)
    assert logged["val/spearman_cosine/2x32"] == pytest.approx(logged["val/spearman"], abs=1e-5)
    assert spearman_at(1, 8) != pytest.approx(spearman_at(2, 32), abs=1e-3)  # the fixture tells the points apart


def test_matryoshka_dim_larger_than_the_embedding_is_one_line(tiny_backbone: str):
    """A dim beyond the width would slice silently to the full width and train the same point twice."""
    with pytest.raises(ValueError) as err:
        DistillModule(BiEncoder(tiny_backbone), {"mat": Matryoshka2D(ScoreRegression(), points=[[None, 64]])})
    text = one_line(err)
    assert "model.init_args.objectives.mat.init_args.points[0]" in text and "larger than the embedding (32)" in text


# --- static students ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def static(tiny_backbone: str) -> StaticStudent:
    return StaticStudent(tiny_backbone, dim=8).eval()


def test_static_table_is_pca_of_the_token_vectors_with_zipf_weights(static: StaticStudent, tiny_backbone: str):
    """Built by hand from the source: each token encoded alone as [CLS] t [SEP], mean-pooled, centred, projected
    on its first 8 principal axes (numpy SVD), each row times a / (a + p_rank). Compared through the Gram matrix,
    which the axes' signs do not change."""
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(tiny_backbone).eval(), AutoTokenizer.from_pretrained(tiny_backbone)
    n = len(tok)
    ids = torch.tensor([[tok.cls_token_id, t, tok.sep_token_id] for t in range(n)])
    with torch.no_grad():
        vectors = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1).double().numpy()
    x = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    inv_rank = 1.0 / np.arange(2, n + 2)
    expected = (x @ vt[:8].T) * (1e-4 / (1e-4 + inv_rank / inv_rank.sum()))[:, None]
    table = static.embedding.weight.detach().double().numpy()
    assert table.shape == (n, 8)
    assert np.allclose(table @ table.T, expected @ expected.T, atol=1e-6 * np.abs(expected).max() ** 2 * 8)


def test_static_encode_is_the_mean_of_the_token_rows(static: StaticStudent):
    """Hand computation: normalise(mean of the rows of "a", "dog", "runs", "."); the tokenizer's [CLS]/[SEP] are no
    part of the text (sentence-transformers' StaticEmbedding never adds them), in training batches or in encode."""
    vocab = static.tokenizer.get_vocab()
    rows = static.embedding.weight.detach()[[vocab[w] for w in ("a", "dog", "runs", ".")]]
    expected = F.normalize(rows.mean(0), dim=-1)
    assert torch.allclose(static.encode(["a dog runs."])[0], expected, atol=1e-6)
    enc = static.tokenizer(["a dog runs.", "the cat"], padding=True, return_tensors="pt")  # with [CLS] ... [SEP]
    with torch.no_grad():
        assert torch.allclose(static(enc["input_ids"], enc["attention_mask"])[0], expected, atol=1e-6)


def test_static_student_needs_a_tokenizer_vocabulary(tiny_backbone: str, tmp_path: Path):
    """A folder of weights only: without the vocabulary the table's rows mean nothing."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_backbone) / name, bare / name)
    with pytest.raises(ValueError) as err:
        StaticStudent(str(bare), dim=8)
    text = one_line(err)
    assert "model.init_args.student.init_args.source" in text and "no tokenizer vocabulary" in text


def test_static_export_loads_as_a_sentence_transformers_static_embedding(static: StaticStudent, tmp_path: Path):
    """The exported folder must give sentence-transformers' own StaticEmbedding the student's embeddings."""
    from sentence_transformers import SentenceTransformer

    from distill.export import export_static

    student = StaticStudent(static.tokenizer_path, dim=8, prefix="query: ").eval()
    export_static(student, tmp_path / "s", {})
    st = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    assert type(st[0]).__name__ == "StaticEmbedding"
    vocab = student.tokenizer.get_vocab()
    # "query: a dog runs." -> [UNK] [UNK] a dog runs . (neither "query" nor ":" is in the tiny vocabulary)
    rows = student.embedding.weight.detach()[[vocab[w] for w in ("[UNK]", "[UNK]", "a", "dog", "runs", ".")]]
    by_hand = F.normalize(rows.mean(0), dim=-1)
    for encode in (st.encode, st.encode_query, st.encode_document):  # the prefix is every prompt
        assert torch.allclose(encode(["a dog runs."], convert_to_tensor=True)[0], by_hand, atol=1e-6)
    assert torch.allclose(st.encode(PROBES, convert_to_tensor=True), student.encode(PROBES), atol=1e-6)
    assert torch.allclose(StaticStudent.from_pretrained(tmp_path / "s").encode(PROBES), student.encode(PROBES))


# --- end to end: fit, then export at a point ----------------------------------------------------------------------

def fit(tiny_backbone: str, pair_files: dict[str, str], out: Path, overlay: str) -> str:
    (out / "overlay.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "overlay.yaml").write_text(overlay)
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *student_args(tiny_backbone, pair_files, out, None), "--config", str(out / "overlay.yaml"),
                   "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                   "--trainer.precision=32"])
    return cli.trainer.checkpoint_callback.best_model_path


def test_matryoshka_student_fits_and_exports_at_a_trained_point(tiny_backbone: str, pair_files: dict[str, str],
                                                                 tmp_path: Path):
    """`distill fit` with keep_layers and a Matryoshka2D objective from YAML, then `distill export --layers --dims`:
    sentence-transformers must return the point's embeddings (layer 1, first 16 dims, renormalised: by hand), and
    a point that was not trained is refused in one line."""
    from sentence_transformers import SentenceTransformer

    from distill.checkpoints import load_model

    ckpt = fit(tiny_backbone, pair_files, tmp_path / "run", f"""
model:
  init_args:
    student: {{class_path: students.BiEncoder, init_args: {{backbone: {tiny_backbone}, keep_layers: [0, 1]}}}}
    objectives:
      teacher_mse: {{class_path: distill.losses.ScoreRegression, init_args: {{weight: 0.0}}}}
      gold_mse: {{class_path: distill.losses.ScoreRegression, init_args: {{weight: 0.0, target: gold}}}}
      mat:
        class_path: distill.losses.Matryoshka2D
        init_args:
          objective: {{class_path: distill.losses.ScoreRegression, init_args: {{target: gold}}}}
          points: [[1, 16], [null, 8], [null, null]]
""")
    with pytest.raises(ExportError) as err:
        export(ckpt, str(tmp_path / "bad"), layers=1, dims=8)
    assert "was not trained" in one_line(err) and "--layers 1 --dims 16" in str(err.value)

    folder = export(ckpt, str(tmp_path / "point"), layers=1, dims=16)
    _, student, _ = load_model(ckpt)
    enc = student.tokenizer(PROBES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        states = student.encoder(**enc, output_hidden_states=True).hidden_states
    by_hand = F.normalize(mean_pool(states[1], enc["attention_mask"])[:, :16], dim=-1)
    st = SentenceTransformer(str(folder), device="cpu")
    assert st.encode(["a cat."]).shape == (1, 16) and st.truncate_dim == 16
    assert torch.allclose(st.encode(PROBES, convert_to_tensor=True), by_hand, atol=1e-5)
    assert torch.allclose(BiEncoder.from_pretrained(folder).encode(PROBES), by_hand, atol=1e-5)
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1


def test_static_student_fits_and_exports(tiny_backbone: str, pair_files: dict[str, str], tmp_path: Path):
    """A static student is distilled like any student (its table moves) and its checkpoint exports as a
    StaticEmbedding folder with the trained table."""
    from sentence_transformers import SentenceTransformer

    ckpt = fit(tiny_backbone, pair_files, tmp_path / "run", f"""
model:
  init_args:
    student: {{class_path: students.StaticStudent, init_args: {{source: {tiny_backbone}, dim: 8}}}}
    objectives:
      teacher_mse: {{class_path: distill.losses.ScoreRegression, init_args: {{weight: 0.0}}}}
      gold_mse: {{class_path: distill.losses.ScoreRegression, init_args: {{weight: 1.0, target: gold}}}}
    lr: 0.05
""")
    folder = export(ckpt, str(tmp_path / "static"))
    trained = StaticStudent.from_pretrained(folder)
    initial = StaticStudent(tiny_backbone, dim=8)
    assert not torch.allclose(trained.embedding.weight, initial.embedding.weight, atol=1e-4)
    st = SentenceTransformer(str(folder), device="cpu")
    assert torch.allclose(st.encode(PROBES, convert_to_tensor=True), trained.encode(PROBES), atol=1e-6)
