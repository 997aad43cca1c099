"""The datamodules on their own: built and iterated without a trainer, tokenisation linked from the model by the
CLI, one constructor surface (subclasses forward PairDataModule's arguments)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from cli_args import ROOT, student_args

from distill.data import GroupDataModule, PairDataModule


def _spec(tiny_backbone: str, joint: bool = False) -> dict:
    """What a student (`joint=False`) or a teacher (`joint=True`) returns from `tokenization()`."""
    return {"tokenizer": tiny_backbone, "max_length": 32, "joint": joint, "prefix": ""}


@pytest.mark.parametrize("joint", [False, True], ids=["student", "teacher"])
def test_pair_datamodule_iterates_without_a_trainer(tiny_backbone: str, pair_files: dict[str, str], joint: bool):
    """A datamodule must not need a trainer's model to know its tokenisation: built from config alone, its
    training batches cover every pair once, padded per batch (it used to raise without `trainer.lightning_module`)."""
    dm = PairDataModule(train=pair_files["train"], val=pair_files["dev"], label_range=(0, 5), batch_size=16,
                        tokenization=_spec(tiny_backbone, joint))
    assert dm.trainer is None
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and sum(len(b["pair_id"]) for b in batches) == 96
    assert sorted(p for b in batches for p in b["pair_id"]) == sorted(dm.datasets["train"]["pair_id"])
    ids = ["input_ids"] if joint else ["a_input_ids", "b_input_ids"]
    for batch in batches:
        widths = {batch[k].shape[1] for k in ids}
        assert len(widths) == 1 and all(batch[k].shape[0] == len(batch["pair_id"]) for k in ids)
        assert batch["gold"].dtype == torch.float32 and 0 <= batch["gold"].min() <= batch["gold"].max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert len(val["pair_id"]) == 48 and ("input_ids" in val) == joint


def test_group_datamodule_iterates_without_a_trainer(tiny_backbone: str, tmp_path: Path):
    """Grouped training data through the forwarded constructor: (query, 1 + k candidates) per row, one width."""
    rng = random.Random(0)
    words = "a man woman dog cat plays eats runs guitar food park the".split()
    lines = ["text_a,text_b,label,group"]
    for g in range(10):
        query = " ".join(rng.choices(words, k=4))
        lines += [f"{query},{' '.join(rng.choices(words, k=rng.randint(2, 8)))},{4 - c},g{g}" for c in range(4)]
    (tmp_path / "groups.csv").write_text("\n".join(lines) + "\n")
    dm = GroupDataModule(n_negatives=2, train=str(tmp_path / "groups.csv"), label_range=(0, 5), batch_size=4,
                         tokenization=_spec(tiny_backbone))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sorted(p for b in batches for p in b["pair_id"]) == [f"g{g}" for g in range(10)]
    for batch in batches:
        n = len(batch["pair_id"])
        assert batch["q_input_ids"].shape[0] == n and batch["c_input_ids"].shape[0] == n * 3
        assert batch["q_input_ids"].shape[1] == batch["c_input_ids"].shape[1]


def test_without_tokenization_or_trainer_the_error_names_the_argument(pair_files: dict[str, str]):
    dm = PairDataModule(train=pair_files["train"], label_range=(0, 5))
    with pytest.raises(RuntimeError, match="PairDataModule needs `tokenization`"):
        dm.setup("fit")


def test_the_cli_links_the_models_tokenization_into_the_datamodule(tiny_backbone: str, pair_files: dict[str, str],
                                                                    tmp_path: Path, capsys):
    """`distill fit` fills `data.init_args.tokenization` from the built model, so the datamodule has it before any
    trainer is attached; it is a link, not a config key a user could set to disagree with the model."""
    import pytorch_lightning as pl

    from distill.cli import DistillCLI

    args = student_args(tiny_backbone, pair_files, tmp_path, None)
    with mock.patch("sys.argv", ["distill"]):
        cli = DistillCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, run=False, args=args)
    assert cli.datamodule.trainer is None
    assert cli.datamodule.tokenization == cli.model.tokenization()
    assert cli.datamodule.tokenization["max_length"] == 128 and not cli.datamodule.tokenization["joint"]
    assert "tokenization" not in cli.datamodule.hparams
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit):
        DistillCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   args=["fit", *args, "--print_config"])
    assert "tokenization" not in capsys.readouterr().out


# every data class keeps PairDataModule's keys (MultilingualDataModule fixes its own splits and label range)
COMMON = {"cache_dir": "runs/x/cache", "batch_size": "7", "id_column": "my_id", "predict": "texts.csv"}
SPLITS = {"train": "a.csv", "val": "b.csv", "test": "c.csv", "label_range": "[0, 5]"}
DATA_CLASSES = {
    "distill.data.PairDataModule": {**SPLITS, **COMMON},
    "distill.data.GroupDataModule": {**SPLITS, **COMMON, "n_negatives": "2"},
    "distill.multilingual.MultilingualDataModule": {**COMMON, "languages": "[en, de]"},
}


@pytest.mark.parametrize("class_path", DATA_CLASSES)
def test_every_data_class_keeps_the_public_keys(class_path: str, capsys):
    """Subclasses take PairDataModule's arguments through **kwargs: each `--data.init_args.<key>` must still parse
    and print (jsonargparse follows **kwargs to the parent's signature)."""
    import yaml

    from distill.cli import run

    keys = DATA_CLASSES[class_path]
    args = ["fit", "--config", str(ROOT / "configs/student/quickstart.yaml"), f"--data={class_path}",
            *(f"--data.init_args.{k}={v}" for k, v in keys.items()), "--print_config"]
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        run(args)
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    assert printed["class_path"] == class_path
    assert {k: printed["init_args"][k] for k in keys} == {k: yaml.safe_load(v) for k, v in keys.items()}


def test_multilingual_data_fixes_its_splits(capsys):
    """MultilingualDataModule sets train/val/test itself: a `train` key is refused, not silently ignored."""
    from distill.cli import run

    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        run(["fit", "--config", str(ROOT / "configs/student/quickstart.yaml"),
             "--data=distill.multilingual.MultilingualDataModule", "--data.init_args.train=a.csv", "--print_config"])
    assert done.value.code == 2 and "'train' is not accepted" in capsys.readouterr().err


def _padded_tokens(batches: list[dict]) -> int:
    return sum(b[k].numel() for b in batches for k in ("a_input_ids", "b_input_ids"))


def test_validation_and_test_run_longest_first_and_predict_keeps_file_order(tiny_backbone: str,
                                                                            pair_files: dict[str, str]):
    """Evaluation batches come longest first (less padding; every pair once), unless group_by_length is off;
    predict keeps file order, since its output rows follow the input file."""
    kwargs = {"train": pair_files["train"], "val": pair_files["dev"], "test": pair_files["test"],
              "predict": pair_files["test"], "label_range": (0, 5), "eval_batch_size": 8,
              "tokenization": _spec(tiny_backbone)}
    dm, plain = PairDataModule(**kwargs), PairDataModule(group_by_length=False, **kwargs)
    for module in (dm, plain):
        module.setup("fit")
        module.setup("test")
        module.setup("predict")
    for split in ("val", "test"):
        batches = list(getattr(dm, f"{split}_dataloader")())
        in_file = list(getattr(plain, f"{split}_dataloader")())
        ids = [p for b in batches for p in b["pair_id"]]
        assert sorted(ids) == sorted(dm.datasets[split]["pair_id"]) and len(ids) == len(set(ids))
        assert [p for b in in_file for p in b["pair_id"]] == list(dm.datasets[split]["pair_id"])
        widths = [max(b["a_input_ids"].shape[1], b["b_input_ids"].shape[1]) for b in batches]
        assert widths == sorted(widths, reverse=True)
        assert _padded_tokens(batches) < _padded_tokens(in_file)
    predicted = [p for b in dm.predict_dataloader() for p in b["pair_id"]]
    assert predicted == list(dm.datasets["predict"]["pair_id"])
    # `limit_val_batches: 2` glances at the first pairs of the file, not at the longest ones
    for limit in (2, 1, 0.5):  # an int is a number of batches (1: one batch, as fast_dev_run sets), a float a share
        dm.trainer = SimpleNamespace(limit_val_batches=limit, limit_test_batches=1.0)
        glance = [p for b in dm.val_dataloader() for p in b["pair_id"]]
        assert glance == list(dm.datasets["val"]["pair_id"]), limit
        assert [p for b in dm.test_dataloader() for p in b["pair_id"]] != list(dm.datasets["test"]["pair_id"])


def test_sorted_evaluation_gives_the_file_order_metrics(tiny_backbone: str, pair_files: dict[str, str],
                                                       tmp_path: Path):
    """Spearman gathers every pair of a set before ranking, so the longest-first order changes no figure (up to
    float noise from narrower padding)."""
    from distill.cli import run
    from distill.data import LengthSortedSampler

    # fp32: bf16 rounding differs with the padded width and could swap two close scores
    args = ["validate", *student_args(tiny_backbone, pair_files, tmp_path, None), "--seed_everything=0",
            "--trainer.precision=32-true"]
    with mock.patch("sys.argv", ["distill"]):
        sorted_cli = run(args)
        in_file = run([*args, "--data.init_args.group_by_length=false"]).trainer.callback_metrics
    assert isinstance(sorted_cli.datamodule.val_dataloader().sampler, LengthSortedSampler)
    sorted_run = sorted_cli.trainer.callback_metrics
    keys = [k for k in in_file if k.startswith("val/spearman")]
    assert keys and all(torch.isfinite(in_file[k]) for k in keys)
    for key in keys:
        assert abs(float(sorted_run[key]) - float(in_file[key])) < 1e-4, key
