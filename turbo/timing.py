"""Honest wall-clock timings: a warm-up call (lazy initialisation, allocator growth, kernel
selection), then the median of repeats. A first call timed alone inflates the slower sampler's
time and a speed-up can come out far beyond what its network evaluations allow."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Seconds one call of ``fn`` takes: ``warmup`` untimed calls, then the median of ``repeats``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, found {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cfg_nfe(steps: int, guidance_scale: float) -> int:
    """Network evaluations of a ``steps``-step sampler with CFG: 2 per step (conditional and
    unconditional halves), 1 when ``guidance_scale`` is 1 (no unconditional half is run)."""
    return (1 if guidance_scale == 1 else 2) * steps


def speedup_bound(teacher_nfe: int, student_nfe: int) -> float:
    """The largest speed-up the network evaluations allow: teacher NFE / student NFE (fixed costs
    shared by both, such as a VAE decode or a text encoder, only lower the real ratio)."""
    return teacher_nfe / student_nfe
