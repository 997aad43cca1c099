"""How `distill bench` times: interleaved repeats after a warm-up, latency percentiles, resident memory, and
the machine it times on.

Every task is run `repeats` times, interleaved with the other tasks (so drift in the machine's speed hits all of
them alike), after one untimed warm-up pass each; figures are medians with their spread over repeats.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm.auto import tqdm

from distill.machine import bf16_reason, cpu_name

T = TypeVar("T")


class RssSampler:
    """Peak resident memory while a block runs.

    On Linux the kernel's own high-water mark is reset on entry (`/proc/self/clear_refs`) and read on exit
    (`VmHWM`), so nothing runs beside the timed code; elsewhere a thread samples /proc every 50 ms. (A sampler
    thread waking every few ms preempts one of the intra-op threads, and a one-query forward waits for its
    slowest thread.)
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> float:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page / 1e6
        except (OSError, IndexError, ValueError):
            return 0.0

    @staticmethod
    def _reset_high_water_mark() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _high_water_mark() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
        return 0.0

    def __enter__(self) -> RssSampler:
        self._peak = self.current()
        self._thread = None
        if not self._reset_high_water_mark():
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, self.current())

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self._peak = max(self._peak, self._high_water_mark())
        else:
            self._stop.set()
            self._thread.join()
        self._peak = max(self._peak, self.current())

    @property
    def peak(self) -> float:
        return self._peak

    def load(self, build: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        """`build(*args, **kwargs)` and the memory (MB) it added to the process."""
        before = self.current()
        built = build(*args, **kwargs)
        return built, self.current() - before


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`fn(*args)` and its wall time in seconds: the latency of one request."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


@dataclass
class Timings:
    """One task's measurements over the repeats: throughput per repeat, latency per request, peak memory."""

    samples: list[float] = field(default_factory=list)  # throughput (requests/s) per repeat
    latencies: list[float] = field(default_factory=list)  # seconds, one per request served
    peak_mb: float = 0.0  # memory the task added to the process at its peak

    def figures(self) -> dict[str, Any]:
        """The row's timing figures: median throughput, p50/p95 latency (ms), [min, max] spread, samples."""
        return {"throughput": median(self.samples), "p50_ms": percentile_ms(self.latencies, 50),
                "p95_ms": percentile_ms(self.latencies, 95),
                "spread": [round(min(self.samples), 3), round(max(self.samples), 3)] if self.samples else None,
                "samples": [round(s, 3) for s in self.samples]}


class Timed(Protocol):
    """What the repeat loop needs of a task."""

    timings: Timings

    def warm_up(self) -> None: ...

    def work(self, repeat: int) -> list[float]:  # -> latencies (s) of the requests served in this repeat
        ...

    def units(self, repeat: int) -> int:  # requests (pairs or queries) served in this repeat
        ...


def run_repeat(task: Timed, repeat: int, sampler: RssSampler) -> None:
    """Time one repeat of a task: its throughput sample, its requests' latencies, its peak memory."""
    start_rss = sampler.current()
    with sampler:
        latencies, elapsed = timed(task.work, repeat)
    t = task.timings
    t.peak_mb = max(t.peak_mb, sampler.peak - start_rss)
    if latencies:
        t.latencies += latencies
        t.samples.append(task.units(repeat) / elapsed)


def run_interleaved(tasks: list[Timed], repeats: int, sampler: RssSampler) -> None:
    """One untimed warm-up per task, then `repeats` rounds, each timing every task once in turn."""
    for task in tqdm(tasks, desc="warm-up", leave=False):
        task.warm_up()
    for r in tqdm(range(repeats), desc="repeats"):
        for task in tasks:
            run_repeat(task, r, sampler)


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def percentile_ms(xs: list[float], q: int) -> float | None:
    """The q-th percentile of latencies given in seconds, in milliseconds."""
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 3) if xs else None


# ---------------------------------------------------------------- the machine


def machine(threads: int) -> dict[str, Any]:
    """The report's `meta.machine`."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "bf16": bf16_reason() or "native"}
