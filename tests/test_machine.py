"""distill.machine: the instruction sets a report's machine line names (the int8 and bf16 figures depend on them)."""

from __future__ import annotations

from distill.machine import cpu_flags, describe


def test_cpu_flags_keep_the_instruction_sets_that_move_figures_in_a_fixed_order(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n"
                       "flags\t\t: fpu sse2 avx512_bf16 avx2 avx512f avx512_vnni sha_ni avx512_vnni_x\n\n")
    assert cpu_flags(cpuinfo) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu_flags(tmp_path / "missing") == []
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 sbf16\n")  # Arm
    assert cpu_flags(cpuinfo) == ["i8mm", "bf16"]


def test_describe_names_the_instruction_sets_and_reads_reports_without_them():
    info = {"cpu": "AMD EPYC", "cores": 2, "threads": 2, "torch": "2.13.0+cpu", "date": "2026-12-01"}
    assert describe(info) == "AMD EPYC, 2 cores (2 torch threads), torch 2.13.0+cpu, 2026-12-01"
    assert describe({**info, "isa": ["avx512f", "avx512_vnni"]}).startswith("AMD EPYC (avx512f avx512_vnni), 2 cores")
