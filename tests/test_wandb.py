"""W&B logging through YAML: the logger switch, one-line errors when W&B cannot work, and the helpers that log
tables, images and artifacts to a run (no-ops without one). The offline fit itself is read back in
test_sweeps.py (its dry runs are W&B-offline fits of the quickstart student, one under DDP)."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from cli_args import ROOT, student_args

from distill import tracking
from distill.cli import main, run

WANDB_YAML = str(ROOT / "configs/logger/wandb.yaml")


def _print_config(*configs: str) -> dict:
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit):
        run(["fit", *[a for c in configs for a in ("--config", c)], "--print_config"])


def test_csv_stays_the_default_and_wandb_is_one_more_config(capsys):
    """Adding configs/logger/wandb.yaml must switch the logger without dropping the recipe's checkpoint callback
    (a replaced callbacks list would silently stop best-checkpoint selection) or naming every run alike."""
    recipe = str(ROOT / "configs/student/quickstart.yaml")
    _print_config(recipe)
    plain = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert plain["logger"]["class_path"] == "pytorch_lightning.loggers.CSVLogger"
    _print_config(recipe, WANDB_YAML)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["logger"]["class_path"] == "distill.tracking.WandbLogger"
    assert trainer["logger"]["init_args"]["name"] is None
    assert trainer["logger"]["init_args"]["save_dir"] == plain["logger"]["init_args"]["save_dir"]
    assert [c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]] == [
        "ModelCheckpoint", "LogConfig", "LearningRateMonitor", "ThroughputMonitor"]


def _fit_with_wandb(tiny_backbone, pair_files, tmp_path, capsys) -> str:
    args = student_args(tiny_backbone, pair_files, tmp_path, None)
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(["fit", *args, "--config", WANDB_YAML, "--model.init_args.objectives.teacher_mse.init_args.weight=0",
              "--trainer.max_steps=1"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_wandb_not_installed_is_one_line(tiny_backbone, pair_files, tmp_path, capsys, monkeypatch):
    """Lightning's own error is a ModuleNotFoundError traceback raised after the model is built."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    line = _fit_with_wandb(tiny_backbone, pair_files, tmp_path, capsys)
    assert "pip install wandb" in line


def test_online_without_login_is_one_line(tiny_backbone, pair_files, tmp_path, capsys, monkeypatch):
    """Online and not logged in, wandb.init prompts for a key (or fails deep inside) on a machine without a
    terminal, e.g. a DDP worker or a batch job: fail at construction naming `wandb login` and offline mode."""
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    line = _fit_with_wandb(tiny_backbone, pair_files, tmp_path, capsys)
    assert "wandb login" in line and "WANDB_MODE=offline" in line


def test_offline_mode_and_api_key_pass_the_check(tmp_path, monkeypatch):
    """The check must not refuse working set-ups: offline mode, a key in the environment, a key in .netrc."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracking.check_wandb()
    monkeypatch.delenv("WANDB_MODE")
    tracking.check_wandb(offline=True)
    with pytest.raises(ValueError, match="wandb login"):
        tracking.check_wandb()
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    tracking.check_wandb()


def test_helpers_log_to_the_active_run_and_are_noops_without_one(tmp_path, monkeypatch):
    """bench and export call these unconditionally: without a run they must do nothing (no wandb.init that
    would create a stray run or prompt for a login); with one, the table, the plot and the folder reach it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb

    plot = tmp_path / "pareto.png"
    plt.figure(figsize=(2, 2))
    plt.plot([1, 2], [3, 4])
    plt.savefig(plot)
    plt.close()
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    rows = [{"model": "student", "backend": "torch-fp32", "pairs_per_s": 812.5}]
    assert wandb.run is None
    assert not tracking.log_table("bench/pairs", rows)
    assert not tracking.log_image("bench/pareto", plot)
    assert not tracking.log_artifact(export, "student", "model")
    monkeypatch.setenv("WANDB_SILENT", "true")
    active = wandb.init(mode="offline", dir=str(tmp_path), project="distill")
    try:
        assert tracking.log_table("bench/pairs", rows)
        assert tracking.log_image("bench/pareto", plot)
        assert tracking.log_artifact(export, "student", "model")
    finally:
        active.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    logged = tracking.read_run(run_dir)
    assert logged["summary"]["bench/pairs"]["_type"] == "table-file"
    assert logged["summary"]["bench/pareto"]["_type"] == "image-file"
    assert "student" in logged["artifacts"]


def test_flatten_gives_the_sweep_key_names():
    """The run config's keys must be the names sweep parameters use, or runs cannot be grouped by them."""
    nested = {"model": {"init_args": {"objectives": {"teacher_mse": {"init_args": {"weight": 0.5}}}}}, "x": []}
    assert tracking.flatten(nested) == {"model.init_args.objectives.teacher_mse.init_args.weight": 0.5, "x": []}


def test_best_checkpoint_accepts_a_file_and_names_the_fix(tmp_path, monkeypatch):
    """`distill export` takes a checkpoint file or a run id; a run without a local or uploaded checkpoint says
    how to get one."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # no model-artifact lookup on the server
    ckpt = tmp_path / "distill" / "abc123" / "checkpoints" / "best-epoch=1.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert tracking.best_checkpoint(str(ckpt)) == ckpt
    assert tracking.best_checkpoint("abc123", root=tmp_path) == ckpt
    with pytest.raises(FileNotFoundError, match="log_model"):
        tracking.best_checkpoint("me/distill/zzz999", root=Path(tmp_path))
