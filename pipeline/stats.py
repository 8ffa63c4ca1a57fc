"""The statistics of every grid ganaug reports: paired differences over seeds and their 95% t-interval."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def mean_ci(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """(mean, half-width of the 95% Student-t interval); the half-width is None for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def fmt_delta(delta: float, lo: float, hi: float) -> str:
    """`+0.012 [-0.004, +0.027]`, with a `*` when the interval excludes 0."""
    star = "*" if lo > 0 or hi < 0 else ""
    return f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def paired_delta(a: Sequence[float], b: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean of a[i] - b[i] over paired seeds and its interval half-width (None below 2 pairs)."""
    return mean_ci([x - y for x, y in zip(a, b, strict=True)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
