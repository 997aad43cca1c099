"""`distill.pareto.pareto_front`: which rows of a hand-made speed/accuracy table are on the frontier."""

from __future__ import annotations

import math

from distill.pareto import pareto_front

ROWS = [
    {"model": "a", "qps": 10.0, "rho": 0.80},
    {"model": "b", "qps": 5.0, "rho": 0.85},
    {"model": "c", "qps": 4.0, "rho": 0.70},  # beaten by a and b on both axes
    {"model": "d", "qps": 10.0, "rho": 0.75},  # as fast as a, less accurate
    {"model": "e", "qps": None, "rho": 0.99},  # a skipped backend: not measured
    {"model": "f", "qps": 10.0, "rho": 0.80},  # ties a exactly
    {"model": "g", "qps": math.nan, "rho": 0.90},
]


def front(rows: list[dict]) -> dict[str, bool]:
    return {r["model"]: r["pareto"] for r in rows}


def test_dominated_rows_are_marked_off_the_front():
    """A row beaten on one axis and tied on the other (d) is dominated; exact ties (a, f) both stay on the front;
    an unmeasured row (e, g) is off the front and hides nothing."""
    got = front(pareto_front(ROWS, "qps", "rho"))
    assert got == {"a": True, "b": True, "c": False, "d": False, "e": False, "f": True, "g": False}


def test_minimized_key_reverses_its_axis_and_rows_are_not_modified():
    """Latency is better when lower: with `minimize`, the slow-but-accurate row wins the other way round."""
    rows = [{"model": "fast", "p50_ms": 1.0, "rho": 0.7}, {"model": "slow", "p50_ms": 9.0, "rho": 0.9},
            {"model": "worse", "p50_ms": 9.0, "rho": 0.8}]
    assert front(pareto_front(rows, "p50_ms", "rho", minimize=["p50_ms"])) == {
        "fast": True, "slow": True, "worse": False}
    # without it, 9 ms counts as better than 1 ms and "fast" is dominated by "slow"
    assert front(pareto_front(rows, "p50_ms", "rho")) == {"fast": False, "slow": True, "worse": False}
    assert all("pareto" not in r for r in rows)
