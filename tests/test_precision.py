"""distill.machine.run_precision: a bf16 precision falls back to 32-true on a CPU without bf16 instructions (where
torch emulates bf16, several times slower than fp32), and is kept on one with them, on a GPU, or when not bf16."""

from __future__ import annotations

import pytest

from distill import machine


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(precision, monkeypatch):
    monkeypatch.setattr(machine, "bf16_reason", lambda: "this CPU lacks native bf16")
    value, why = machine.run_precision(precision, "cpu")
    assert value == "32-true" and why == f"precision {precision} -> 32-true: this CPU lacks native bf16"


def test_bf16_is_kept_on_a_cpu_with_bf16_on_a_gpu_and_other_precisions_untouched(monkeypatch):
    monkeypatch.setattr(machine, "bf16_reason", lambda: None)
    assert machine.run_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
    monkeypatch.setattr(machine, "bf16_reason", lambda: "no bf16")
    assert machine.run_precision("bf16-mixed", "gpu") == ("bf16-mixed", None)
    assert machine.run_precision("16-mixed", "cpu") == ("16-mixed", None)
    assert machine.run_precision(None, "cpu") == (None, None)


def test_bf16_reason_reads_the_cpu_flags(tmp_path, monkeypatch):
    import pathlib

    cpuinfo = tmp_path / "cpuinfo"
    real = pathlib.Path

    class FakePath(type(real())):  # /proc/cpuinfo -> the fixture file, every other path as it is
        def __new__(cls, *parts):
            return real(cpuinfo) if parts == ("/proc/cpuinfo",) else real(*parts)

    monkeypatch.setattr(machine, "Path", FakePath)
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert "lacks native bf16" in machine.bf16_reason()
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert machine.bf16_reason() is None
    cpuinfo.write_text("Features\t: fp asimd sve bf16 i8mm\n")
    assert machine.bf16_reason() is None


def test_every_trainer_verb_applies_it_and_keep_precision_keeps_bf16(tiny_backbone, pair_files, tmp_path,
                                                                    monkeypatch, capsys):
    from cli_args import teacher_args

    from distill.cli import run

    monkeypatch.setattr(machine, "bf16_reason", lambda: "no bf16 here")
    args = ["validate", *teacher_args(tiny_backbone, pair_files, tmp_path), "--trainer.precision=bf16-mixed"]
    assert run(args).trainer.precision == "32-true"
    assert "distill validate: precision bf16-mixed -> 32-true: no bf16 here" in capsys.readouterr().err
    assert run([*args, "--keep_precision", "true"]).trainer.precision == "bf16-mixed"
    monkeypatch.setattr(machine, "bf16_reason", lambda: None)
    assert run(args).trainer.precision == "bf16-mixed"
