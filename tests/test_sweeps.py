"""`distill sweep`: every shipped sweep file dry-runs on the tiny backbone (W&B offline, one run under DDP), and
sweep mistakes fail before any training with one line naming the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import pytest
import yaml
from cli_args import ROOT, cache_args

from distill.cli import main, run
from distill.sweep import SweepError, check_metric
from distill.tracking import best_checkpoint, read_run

SWEEPS = sorted((ROOT / "configs/sweeps").glob("*.yaml"))


def _run(argv: list[str]):  # noqa: ANN202 - the tool's result
    with mock.patch("sys.argv", ["distill"]):
        return run(argv)


def _data_args(pairs: dict[str, str], train: str | Path, cache: str | Path) -> str:
    # one YAML list for `--args`: the tiny data in place of the recipe's; fp32 keeps tiny CPU runs quick
    args = [f"--data.init_args.train={train}", f"--data.init_args.val={pairs['dev']}",
            f"--data.init_args.test={pairs['test']}", "--data.init_args.label_range=[0, 5]",
            f"--data.init_args.cache_dir={cache}", "--trainer.precision=32-true"]
    return f"--args={json.dumps(args)}"


@pytest.fixture(scope="module")
def quickstart_dry_run(tiny_backbone, pair_files, score_cache, tmp_path_factory, monkeypatch_module):
    """Two sampled runs of the quickstart sweep, the second under 2-process DDP."""
    out = tmp_path_factory.mktemp("sweep-quickstart")
    return _run(["sweep", "--config", "configs/sweeps/quickstart.yaml", "--dry_run", "--count=2", "--ddp=1",
                 f"--backbone={tiny_backbone}", _data_args(pair_files, pair_files["train"], score_cache),
                 f"--out={out}", "--timeout=900"])


@pytest.fixture(scope="module")
def monkeypatch_module():
    # sweep commands name their recipe relative to the project root, as `wandb agent` runs them there
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        yield patch


@pytest.fixture(scope="module")
def groups(tiny_backbone, pair_files, teacher_ckpt, tmp_path_factory) -> tuple[Path, Path]:
    """Mined (query, positive, 3 negatives) groups and their teacher-score cache, for the contrastive recipe."""
    folder = tmp_path_factory.mktemp("sweep-groups")
    path = _run(["mine", "--config", str(ROOT / "configs/mine/groups.yaml"),
                 f"--student.init_args.backbone={tiny_backbone}", f"--sentences=[{pair_files['train']}]",
                 f"--out={folder / 'groups.parquet'}", "--max_pairs=null",
                 "--mode=groups", f"--positives={pair_files['train']}", "--min_gold=null", "--n_negatives=3",
                 "--skip_top=0"])
    _run(cache_args(tiny_backbone, {"train": str(path)}, teacher_ckpt, folder / "cache"))
    return path, folder / "cache"


def test_every_sweep_file_is_covered():
    """A new sweep file without a dry-run test could ship with a key the CLI does not know."""
    assert {p.name for p in SWEEPS} == {"quickstart.yaml", "contrastive.yaml", "multilingual.yaml"}  # the last:
    # tests/test_multilingual.py (it needs that file's pivot cache)


def test_quickstart_sweep_dry_runs_with_one_wandb_run_each(quickstart_dry_run):
    """The agent's exact command (W&B's macro expansion) trains, logs the sweep metric each validation, and
    makes exactly one W&B run, also under 2-process DDP (a rank-1 run would double every sweep run)."""
    assert [r["ddp"] for r in quickstart_dry_run] == [False, True]
    for result in quickstart_dry_run:
        command = result["command"]
        assert command[:7] == ["/usr/bin/env", "distill", "fit", "--config", "configs/student/quickstart.yaml",
                               "--config", "configs/logger/wandb.yaml"]
        assert sorted(c.split("=")[0] for c in command[7:]) == sorted(f"--{k}" for k in result["params"])
        # a Spearman: finite (NaN, from constant scores or a metric logged before any update, must fail here)
        assert math.isfinite(result["metric"]) and -1 <= result["metric"] <= 1, result["metric"]


def test_offline_run_holds_the_resolved_config_and_final_metrics(quickstart_dry_run):
    """Read back the W&B run folder: the full resolved config under the sweep's dotted keys (so runs can be
    grouped by any setting), every objective term, validation metrics, learning rate and throughput."""
    result = quickstart_dry_run[0]
    run_dir = Path(result["run_dir"])
    logged = read_run(run_dir)
    config, summary = logged["config"], logged["summary"]
    for key, value in result["params"].items():
        assert config[key] == value, key
    assert config["trainer.max_steps"] == 2 and config["seed_everything"] == 0
    assert config["data.class_path"] == "distill.data.PairDataModule"
    assert config["trainer.logger.class_path"] == "distill.tracking.WandbLogger"
    for key in ("train/teacher_mse", "train/gold_mse", "train/loss", "val/spearman", "val/spearman_cosine",
                "val/spearman_dse", "train/samples", "train/batches"):
        assert key in summary, (key, sorted(summary))
    assert any(k.startswith("lr-") for k in summary), sorted(summary)


def test_best_checkpoint_of_a_run_id(quickstart_dry_run):
    """`distill export` is given a run id (e.g. the sweep's best run) and finds its selected checkpoint."""
    result = quickstart_dry_run[0]
    run_id = Path(result["run_dir"]).name.split("-")[-1]
    root = Path(result["run_dir"]).parents[1]
    found = best_checkpoint(f"me/distill/{run_id}", root=root)
    assert found.name.startswith("best") and found.parent.parent.name == run_id
    with pytest.raises(FileNotFoundError, match="log_model"):
        best_checkpoint("nosuchrun", root=root)


def test_contrastive_sweep_dry_runs(tiny_backbone, pair_files, groups, tmp_path, monkeypatch_module):
    """Objective weights and temperatures of the contrastive recipe are keys the fit accepts, and its
    hyperband metric is logged by a 2-step run."""
    results = _run(["sweep", "--config", "configs/sweeps/contrastive.yaml", "--dry_run", "--count=1",
                    f"--backbone={tiny_backbone}", _data_args(pair_files, groups[0], groups[1]), f"--out={tmp_path}"])
    assert len(results) == 1 and "val/spearman" in results[0]["summary"]
    assert any(k.startswith("train/listwise_kl") for k in results[0]["summary"])


def _bad_sweep(tmp_path: Path, **change) -> Path:
    sweep = yaml.safe_load((ROOT / "configs/sweeps/quickstart.yaml").read_text())
    sweep.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _one_line_error(argv: list[str], capsys) -> str:
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_parameter_that_is_not_a_cli_key_is_named(tmp_path, capsys, monkeypatch_module):
    """A typo in a parameter name would fail every run of a real sweep (or, under a dict, add an unused entry):
    refuse it before any training, naming it and the key it resembles."""
    params = {"model.init_args.learning_rate": {"values": [1e-5]},
              "model.init_args.student.init_args.pooling": {"values": ["mean"]}}
    line = _one_line_error(["sweep", "--config", str(_bad_sweep(tmp_path, parameters=params)), "--dry_run"], capsys)
    assert "'model.init_args.learning_rate'" in line and "--print_config" in line and "pooling" not in line


def test_metric_never_logged_is_named(quickstart_dry_run):
    """A metric the fit never logs leaves the sweep's Bayesian search and hyperband blind: the dry run names it
    and what the fit did log (checked on a real dry run's summary)."""
    summary = quickstart_dry_run[0]["summary"]
    assert check_metric(summary, {"name": "val/spearman"}) == summary["val/spearman"]
    with pytest.raises(SweepError) as error:
        check_metric(summary, {"name": "val/spearman_cosin", "goal": "maximize"})
    line = str(error.value)
    assert "\n" not in line and "'val/spearman_cosin' was never logged" in line and "val/spearman_cosine" in line
    assert "metric.name" in line


def test_command_without_args_macro_is_refused(tmp_path, capsys):
    """Without ${args} the agent would run the recipe's defaults every time: a sweep of identical runs."""
    path = _bad_sweep(tmp_path, command=["${env}", "distill", "fit", "--config", "configs/student/quickstart.yaml"])
    assert "${args}" in _one_line_error(["sweep", "--config", str(path)], capsys)
