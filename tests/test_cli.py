"""The command line: help, shipped configs, config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from distill.cli import TOOLS, TRAINER_VERBS, main, run

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_verb(capsys):
    """`distill --help` shows both groups: Trainer verbs and tools."""
    main(["--help"])
    text = capsys.readouterr().out
    for verb in [*TRAINER_VERBS, *TOOLS]:
        assert f"  {verb} " in text


# every shipped config (base and overlays) parses: tests/test_configs.py


def test_objective_weight_is_set_by_its_dotted_key(capsys):
    """A sweep sets a weight with --model.init_args.objectives.<name>.init_args.weight=X."""
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit):
        run(["fit", "--config", str(ROOT / "configs/student/quickstart.yaml"),
             "--model.init_args.objectives.teacher_mse.init_args.weight=0.7", "--print_config"])
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    objectives = printed["model"]["init_args"]["objectives"]
    assert objectives["teacher_mse"]["init_args"]["weight"] == 0.7
    assert objectives["gold_mse"]["init_args"]["weight"] == 0.5


def test_unknown_config_key_is_named():
    """A typo in a key fails before any work, naming the key."""
    proc = subprocess.run([sys.executable, "-m", "distill", "fit", "--config",
                           str(ROOT / "configs/teacher/quickstart.yaml"), "--model.init_args.learning_rate=1e-3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Option 'learning_rate' is not accepted" in proc.stderr


def test_missing_backbone_is_one_line(tmp_path):
    """A backbone folder that does not exist ends in one `distill: error:` line naming it."""
    proc = subprocess.run([sys.executable, "-m", "distill", "fit", "--config",
                           str(ROOT / "configs/teacher/quickstart.yaml"),
                           f"--model.init_args.backbone={tmp_path}/nope/model"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distill: error:")]
    assert len(errors) == 1 and "nope/model" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("override", "named"), [
    ("--data.init_args.batch_size=many", "batch_size"),
    ("--model.class_path=teachers.NoSuchTeacher", "teachers.NoSuchTeacher"),
    ("--model.init_args.loss=hinge", "model.init_args.loss"),
], ids=["wrong type", "class_path that does not import", "invalid choice"])
def test_config_errors_name_the_key(override, named):
    """Config mistakes fail before any work with the key (or class) named, and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "distill", "fit", "--config",
                           str(ROOT / "configs/teacher/quickstart.yaml"), override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]


@pytest.mark.parametrize("value, expected", [("-1", "ScoreRegression weight is -1.0"), ("abc", "Got value: abc")])
def test_bad_objective_weight_is_one_line_naming_its_key(value, expected, tiny_backbone, pair_files, tmp_path,
                                                         capsys):
    """A negative or non-numeric weight ends `distill fit` with one line naming the objective's dotted key."""
    from cli_args import student_args

    from distill.cli import main

    args = ["fit", *student_args(tiny_backbone, pair_files, tmp_path, None),
            f"--model.init_args.objectives.teacher_mse.init_args.weight={value}"]
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(args)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error: ")]
    assert done.value.code == 2 and len(errors) == 1, errors
    assert expected in errors[0] and "model.init_args.objectives.teacher_mse.init_args.weight" in errors[0]
