"""Where a figure was measured: the description every report carries (a leaf module: torch and stdlib only)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


#: instruction sets that move CPU figures, as /proc/cpuinfo names them: AVX-512 and VNNI (x86) or i8mm (Arm) decide
#: how fast ONNX int8 serves against fp32 torch, avx512_bf16/AMX (x86) or bf16 (Arm) whether bf16 is native (a
#: "x all-MiniLM-L6-v2" ratio measured on one of these CPUs does not hold on another)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "i8mm", "bf16")
NATIVE_BF16 = {"avx512_bf16", "amx_bf16", "bf16"}  # bf16: Armv8.6 BFloat16 (Graviton3, Neoverse V1/N2, Apple M2)


def cpu_flags(cpuinfo: Path | None = None) -> list[str]:
    """The instruction sets of ISA_FLAGS this CPU has, in that order (the `flags` line on x86, `Features` on Arm;
    empty where there is neither); `cpuinfo`: another file to read than /proc/cpuinfo (resolved per call, so tests
    can stand one in)."""
    cpuinfo = cpuinfo or Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def bf16_reason() -> str | None:
    """Why torch bf16 is not measured here, or None when the CPU has native bf16 instructions."""
    if NATIVE_BF16 & set(cpu_flags()):
        return None
    return "this CPU lacks native bf16 (avx512_bf16/amx_bf16): torch would emulate it, slower than fp32"


def run_precision(precision: Any, accelerator: Any = "auto") -> tuple[Any, str | None]:
    """The Lightning precision a run should use, and why it differs from the configured one (else None).

    A bf16 precision (the configs' `bf16-mixed`, tuned on CPUs with bf16 instructions, where it is ~3x faster than
    fp32) becomes `32-true` on a CPU without them: torch emulates bf16 there, ~4x *slower* than fp32 per matmul
    (measured on an AVX-512 Xeon without avx512_bf16), so a 20-minute fit would take over an hour. GPUs and CPUs
    with native bf16 keep what was configured.
    """
    import torch

    if not (isinstance(precision, str) and precision.startswith("bf16")):
        return precision, None
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    reason = bf16_reason() if on_cpu else None
    if reason is None:
        return precision, None
    return "32-true", f"precision {precision} -> 32-true: {reason}"


def machine() -> dict[str, Any]:
    """CPU, its instruction sets of ISA_FLAGS, cores, torch threads, torch version, date (and the GPU when there is
    one)."""
    import torch

    info = {"cpu": cpu_name(), "isa": cpu_flags(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe(info: dict[str, Any] | str) -> str:
    """One line for a report's reader (older reports hold a string already)."""
    if isinstance(info, str):
        return info
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    isa = f" ({' '.join(info['isa'])})" if info.get("isa") else ""  # reports before 2026-12-01 have no `isa`
    return f"{info['cpu']}{isa}, {info['cores']} cores ({info['threads']} torch threads){gpu}, " \
           f"torch {info['torch']}, {info['date']}"
