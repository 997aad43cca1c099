"""The int8 ONNX export is parity-checked, not only reported: a quantisation that breaks the model is refused and
leaves nothing behind, for the student and the teacher (issue 15 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill import export as export_module
from distill.export import ExportError
from distill.export import main as export


def _scrambling_quantiser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantise as usual, then scramble the weights (random int8 values, noise on the float ones): a quantiser bug
    that still writes a loadable graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from distill import onnx_backend

    real, rng = onnx_backend.quantize_int8, np.random.default_rng(0)

    def broken(source: Path, target: Path) -> None:
        real(source, target)
        model = onnx.load(str(target))
        for init in model.graph.initializer:
            value = numpy_helper.to_array(init)
            if init.data_type == onnx.TensorProto.INT8:
                value = rng.integers(-127, 128, value.shape).astype(np.int8)
            elif init.data_type == onnx.TensorProto.FLOAT:
                value = (value + rng.normal(size=value.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
        onnx.save(model, str(target))

    monkeypatch.setattr(onnx_backend, "quantize_int8", broken)


def test_a_broken_int8_student_is_refused(student_ckpt: str, tmp_path: Path, monkeypatch):
    """Broken int8 weights were exported and only their Spearman delta written in the report."""
    _scrambling_quantiser(monkeypatch)
    with pytest.raises(ExportError, match=r"model_qint8.onnx: int8 check int8_min_cosine is .*beyond its limit 0.8"):
        export(student_ckpt, str(tmp_path / "student"), int8=True)
    assert list(tmp_path.iterdir()) == []


def test_teacher_int8_is_checked_and_recorded(teacher_ckpt: str, tmp_path: Path, monkeypatch):
    folder = export(teacher_ckpt, str(tmp_path / "teacher"), int8=True)
    checks = json.loads((folder / "export_report.json").read_text())["checks"]
    assert 0 <= checks["int8_mean_abs_diff"] <= export_module.INT8_MEAN_SCORE_DIFF, checks
    assert checks["int8_max_abs_diff"] >= checks["int8_mean_abs_diff"], checks
    # the tiny teacher scores every STS-B pair alike (std ~1e-5): its Spearman is int8 noise, and says so
    assert "Spearman not checked" in checks["int8_checked_on"], checks
    assert "int8_mean_abs_diff" in (folder / "README.md").read_text()
    # a teacher whose scores vary has its Spearman delta checked too (here against an impossible limit)
    monkeypatch.setattr("distill.export.INT8_MIN_SCORE_SPREAD", 0.0)
    monkeypatch.setattr("distill.export.INT8_SPEARMAN_DELTA", -1.0)
    with pytest.raises(ExportError, match="int8 check int8_spearman_delta is .*beyond its limit -1.0"):
        export(teacher_ckpt, str(tmp_path / "again"), int8=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_a_broken_int8_teacher_is_refused(teacher_ckpt: str, tmp_path: Path, monkeypatch):
    """The teacher's int8 graph was written without any check at all."""
    _scrambling_quantiser(monkeypatch)
    with pytest.raises(ExportError, match="model_qint8.onnx: int8 check int8_.* is .*beyond its limit") as err:
        export(teacher_ckpt, str(tmp_path / "teacher"), int8=True)
    assert "\n" not in str(err.value) and "export without --int8" in str(err.value), str(err.value)
    assert list(tmp_path.iterdir()) == []
