"""Timing summaries for wait and hold times, cheap enough to record on every lease.

A lab asks "who is hogging the port, and how long do callers wait for it". Recording must not
slow the lease fast path, so a sample costs one deque append plus three arithmetic updates; the
percentiles are computed only when someone asks for them (status page, benchmark).
"""

from __future__ import annotations

import math
from collections import deque

_RESERVOIR = 4096
"""Recent samples kept for percentiles: enough for a stable p95, bounded for a week-long run."""


class TimingSummary:
    """Running count/mean/max over all samples, percentiles over the most recent ones."""

    __slots__ = ("count", "total", "max", "_recent")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._recent: deque[float] = deque(maxlen=_RESERVOIR)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        self._recent.append(seconds)

    def summary(self) -> dict[str, float | int]:
        """count, mean, p50, p95, max in seconds (zeros before the first sample)."""
        recent = sorted(self._recent)
        return {
            "count": self.count,
            "mean": self.total / self.count if self.count else 0.0,
            "p50": _percentile(recent, 0.50),
            "p95": _percentile(recent, 0.95),
            "max": self.max,
        }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    # Nearest-rank: always a value that was really observed, which is what a reader expects.
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
