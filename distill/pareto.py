"""The speed/accuracy frontier: which rows of a report no other row beats on both axes.

A leaf module (stdlib only): bench reports and recipes mark their rows with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

FRONT_KEY = "pareto"  # the boolean each marked row carries


def pareto_front(rows: Sequence[dict[str, Any]], x_key: str, y_key: str,
                 minimize: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Copies of `rows`, each with `pareto`: True where no other row dominates it on (`x_key`, `y_key`).

    Row b dominates row a when b is at least as good on both keys and strictly better on one; higher is better
    unless the key is named in `minimize` (e.g. `p50_ms`). Rows with equal values on both keys do not dominate
    each other, so ties are all on the front. A row without a finite number under either key is off the front and
    dominates nothing (a skipped backend, a failed measurement).

    Args:
        rows: report rows (dicts); not modified.
        x_key: first axis, e.g. `queries_per_s_1v1000`.
        y_key: second axis, e.g. `stsb_test_spearman`.
        minimize: the keys where lower is better.
    """
    def value(row: dict[str, Any], key: str) -> float | None:
        v = row.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return -float(v) if key in minimize else float(v)

    points = [(value(r, x_key), value(r, y_key)) for r in rows]
    marked = []
    for row, (x, y) in zip(rows, points):
        on_front = x is not None and y is not None and not any(
            ox is not None and oy is not None and ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)
        marked.append({**row, FRONT_KEY: on_front})
    return marked
