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


def bf16_reason() -> str | None:
    """Why torch bf16 is not measured here, or None when the CPU has native bf16 instructions."""
    flags = ""
    if Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return None
    return "this CPU lacks native bf16 (avx512_bf16/amx_bf16): torch would emulate it, slower than fp32"


def machine() -> dict[str, Any]:
    """CPU, cores, torch threads, torch version, date (and the GPU when there is one)."""
    import torch

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe(info: dict[str, Any] | str) -> str:
    """One line for a report's reader (older reports hold a string already)."""
    if isinstance(info, str):
        return info
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return f"{info['cpu']}, {info['cores']} cores ({info['threads']} torch threads){gpu}, torch {info['torch']}, " \
           f"{info['date']}"
