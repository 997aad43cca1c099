"""The objectives of distill/losses on seeded or hand-made tensors, and their bad-input errors."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from datasets import Dataset

from distill.cli import run
from distill.data import DataError, GroupCollator, make_groups
from distill.losses import InfoNCE, ListwiseKL, MarginMSE, ScoreRegression


def test_margin_mse_matches_a_hand_computed_value():
    """MarginMSE compares margins to the positive (column 0), not raw scores: a student offset by a constant
    from the teacher has loss 0, and a swapped negative costs exactly its squared margin error."""
    teacher = torch.tensor([[0.9, 0.2, 0.5], [0.6, 0.6, 0.1]])
    student = torch.tensor([[0.5, -0.2, 0.3], [0.1, 0.3, -0.4]])
    # margins: teacher [[0.7, 0.4], [0.0, 0.5]], student [[0.7, 0.2], [-0.2, 0.5]]
    expected = (0.0 ** 2 + 0.2 ** 2 + 0.2 ** 2 + 0.0 ** 2) / 4
    assert MarginMSE()(student, teacher).item() == pytest.approx(expected, abs=1e-6)
    assert MarginMSE()(teacher + 3.0, teacher).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(batch, 1 \+ k\)"):
        MarginMSE()(student[:, :1], teacher[:, :1])  # no negative: a margin of nothing trains nothing


def test_listwise_kl_matches_a_hand_computed_value():
    """KL(teacher || student) with each side's own temperature, averaged over queries."""
    student = torch.tensor([[0.8, 0.1], [0.2, 0.4]])
    teacher = torch.tensor([[0.9, 0.3], [0.5, 0.5]])
    ts, tt = 0.5, 0.25

    def softmax(xs: list[float], t: float) -> list[float]:
        e = [math.exp(x / t) for x in xs]
        return [x / sum(e) for x in e]

    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax(t_row, tt), softmax(s_row, ts)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected /= 2
    loss = ListwiseKL(temperature=ts, teacher_temperature=tt)(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert ListwiseKL(temperature=0.3, teacher_temperature=0.3)(teacher, teacher).item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        ListwiseKL(temperature=0.0)


def _nce_by_hand(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor | None, scale: float) -> float:
    """-log softmax of each query's positive among [all positives, all negatives], computed row by row."""
    qn = [x / x.norm() for x in q]
    cands = [x / x.norm() for x in p] + ([x / x.norm() for x in n.reshape(-1, n.shape[-1])] if n is not None else [])
    total = 0.0
    for i, qi in enumerate(qn):
        logits = [scale * float(qi @ c) for c in cands]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(qn)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_info_nce_matches_a_hand_computed_value(with_negatives):
    """In one process the positive of query i is column i, hard negatives come after all positives."""
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    n = torch.randn(4, 2, 8, generator=g) if with_negatives else None
    loss = InfoNCE(scale=5.0)(q, p, n)
    assert loss.item() == pytest.approx(_nce_by_hand(q, p, n, 5.0), rel=1e-5)
    # hard_negatives=False ignores them: the plain in-batch loss
    assert InfoNCE(scale=5.0, hard_negatives=False)(q, p, n).item() == pytest.approx(_nce_by_hand(q, p, None, 5.0),
                                                                                       rel=1e-5)


def test_info_nce_symmetric_averages_both_directions():
    """The symmetric loss adds positive -> queries ranking; swapping q and p leaves it unchanged."""
    g = torch.Generator().manual_seed(1)
    q, p = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    expected = (_nce_by_hand(q, p, None, 20.0) + _nce_by_hand(p, q, None, 20.0)) / 2
    assert InfoNCE(symmetric=True)(q, p).item() == pytest.approx(expected, rel=1e-5)
    assert InfoNCE(symmetric=True)(p, q).item() == pytest.approx(expected, rel=1e-5)


def test_score_regression_leaves_out_rows_without_a_target():
    """Silver pairs have no gold label (NaN): the gold term is the MSE over labelled rows only, not NaN."""
    scores = torch.tensor([0.2, 0.5, 0.9, 0.4])
    gold = torch.tensor([0.0, float("nan"), 1.0, float("nan")])
    assert ScoreRegression(target="gold")(scores, gold).item() == pytest.approx((0.2 ** 2 + 0.1 ** 2) / 2)
    scores.requires_grad_(True)
    none = ScoreRegression(target="gold")(scores, torch.full((4,), float("nan")))
    none.backward()
    assert none.item() == 0.0 and scores.grad is not None and not scores.grad.isnan().any()


@pytest.mark.parametrize("cls", [ScoreRegression, MarginMSE, ListwiseKL, InfoNCE])
@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf"), "x"])
def test_bad_weights_are_one_line_errors_naming_the_key(cls, weight):
    """A negative or NaN weight would silently train away from the teacher, or turn every loss into NaN."""
    with pytest.raises(ValueError, match=r"weight is .*model\.init_args\.objectives\.<name>\.init_args"):
        cls(weight=weight)


def test_groups_with_fewer_candidates_than_configured_name_the_key():
    """A short group would make a ragged score matrix (or silently fewer negatives); say which key to lower."""
    rows = Dataset.from_dict({"group": ["0", "0", "0", "1", "1"], "text_a": ["q"] * 3 + ["r"] * 2,
                              "a_input_ids": [[1, 2]] * 5, "b_input_ids": [[3], [4], [5], [6], [7]]})
    with pytest.raises(DataError, match=r"group '1' has 2\).*data\.init_args\.n_negatives to 1"):
        make_groups(rows, 3, "group", "mined.parquet")
    groups = make_groups(rows, 2, "group", "mined.parquet")
    assert groups["c_input_ids"] == [[[3], [4]], [[6], [7]]]  # first rows kept: the positive, the hardest


def test_group_collator_layout():
    """Candidates are group-major, (batch * n, width): row i * n + j is candidate j of group i."""
    rows = [{"pair_id": "a", "q_input_ids": [1, 2, 3], "c_input_ids": [[4], [5, 6]], "score": [0.9, 0.1]},
            {"pair_id": "b", "q_input_ids": [7], "c_input_ids": [[8, 9, 10, 11], [12]], "score": [0.8, 0.3]}]
    batch = GroupCollator(0)(rows)
    assert batch["q_input_ids"].shape == (2, 4) and batch["c_input_ids"].shape == (4, 4)
    assert batch["c_input_ids"][2].tolist() == [8, 9, 10, 11] and batch["c_attention_mask"][1].tolist() == [1, 1, 0, 0]
    assert batch["score"].shape == (2, 2)


def test_new_objective_weights_have_dotted_cli_keys(capsys):
    """Each objective of the contrastive config is set by `--model.init_args.objectives.<name>.init_args.weight`."""
    from cli_args import ROOT

    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit):
        run(["fit", "--config", str(ROOT / "configs/student/contrastive.yaml"),
             "--model.init_args.objectives.margin_mse.init_args.weight=0.25",
             "--model.init_args.objectives.listwise_kl.init_args.temperature=0.1", "--print_config"])
    import yaml

    objectives = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["objectives"]
    # parsed, not substrings: `teacher_temperature: 0.1` (the config's own) must not pass for the override
    assert objectives["margin_mse"]["init_args"]["weight"] == 0.25
    assert objectives["listwise_kl"]["init_args"]["temperature"] == 0.1
    assert objectives["listwise_kl"]["init_args"]["teacher_temperature"] == 0.1  # untouched
    assert objectives["info_nce"]["init_args"]["weight"] == 1.0  # only the named objective changed
