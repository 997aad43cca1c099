"""Error lines: a missing extra names the pip command, a RuntimeError is one line, DISTILL_DEBUG=1 gives the
traceback, predict without a writer is refused up front, zero-shot `distill test` says so."""

from __future__ import annotations

import sys
from unittest import mock

import pytest
from cli_args import student_args

from distill.cli import main


def _error_lines(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, list[str], str]:
    with mock.patch("sys.argv", ["distill"]), pytest.raises(SystemExit) as done:
        main(args)
    stderr = capsys.readouterr().err
    return done.value.code, [line for line in stderr.splitlines() if line.startswith("distill: error: ")], stderr


@pytest.mark.parametrize("missing, flags", [("sentence_transformers", []), ("onnxruntime", ["--onnx"])])
def test_missing_extra_is_one_line_naming_the_install(missing, flags, student_ckpt, tmp_path, capsys, monkeypatch):
    """`distill export` without the export extra: one line with the pip command, no traceback."""
    monkeypatch.setitem(sys.modules, missing, None)  # `import` of it now raises ModuleNotFoundError
    code, errors, stderr = _error_lines(capsys, ["export", "--ckpt", student_ckpt, "--out", str(tmp_path / "x"),
                                                 *flags])
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert "pip install 'distill[export]'" in errors[0]


def test_import_error_of_an_extra_names_its_extra(capsys, monkeypatch):
    """A bare ModuleNotFoundError of a module an extra installs is mapped to that extra."""
    def missing(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn.gaussian_process")

    monkeypatch.setattr("distill.cli.run", missing)
    code, errors, _ = _error_lines(capsys, ["sweep"])
    assert code == 2 and errors == ["distill: error: sklearn is not installed (No module named 'sklearn'); install "
                                    "it with pip install 'distill[sweeps]'"]


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), ValueError("an internal bug")])
def test_errors_are_one_line_and_distill_debug_shows_the_traceback(error, capsys, monkeypatch):
    """Without DISTILL_DEBUG: one line (a RuntimeError's says how to see more); with DISTILL_DEBUG=1 the error
    itself propagates, with its traceback."""
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("distill.cli.run", fail)
    monkeypatch.delenv("DISTILL_DEBUG", raising=False)
    monkeypatch.delenv("DISTILL_TRACEBACK", raising=False)
    code, errors, stderr = _error_lines(capsys, ["fit"])
    assert code == 2 and len(errors) == 1 and str(error) in errors[0] and "Traceback" not in stderr
    assert ("DISTILL_DEBUG=1" in errors[0]) == isinstance(error, RuntimeError)
    monkeypatch.setenv("DISTILL_DEBUG", "1")
    with pytest.raises(type(error), match=str(error)):
        main(["fit"])


def test_help_documents_distill_debug(capsys):
    main(["--help"])
    assert "DISTILL_DEBUG=1" in capsys.readouterr().out


def test_predict_without_a_writer_is_refused_up_front(tiny_backbone, pair_files, tmp_path, capsys):
    """`distill predict` without --predictions would compute every embedding and keep none: refused before
    the model is built."""
    args = ["predict", *student_args(tiny_backbone, pair_files, tmp_path, None),
            f"--data.init_args.predict={pair_files['test']}"]
    with mock.patch("students.bi_encoder.load_backbone", side_effect=AssertionError("the backbone was loaded")):
        code, errors, stderr = _error_lines(capsys, args)
    assert code == 2 and len(errors) == 1 and "--predictions" in errors[0], stderr[-2000:]


def test_zero_shot_test_says_so(tiny_backbone, pair_files, student_ckpt, tmp_path, capsys):
    """`distill test` without --ckpt_path still runs (zero-shot is legitimate) but says so in one line; with a
    checkpoint it does not."""
    from distill.cli import run

    args = ["test", *student_args(tiny_backbone, pair_files, tmp_path, None), "--trainer.logger=false"]
    with mock.patch("sys.argv", ["distill"]):
        run(args)
        zero_shot = [line for line in capsys.readouterr().err.splitlines() if "zero-shot" in line]
        run([*args, "--ckpt_path", student_ckpt])
        trained = [line for line in capsys.readouterr().err.splitlines() if "zero-shot" in line]
    assert len(zero_shot) == 1 and "--ckpt_path" in zero_shot[0] and not trained
