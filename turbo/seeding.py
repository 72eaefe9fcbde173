"""Seeded construction: a random model built from a seed alone, the caller's random state untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` under ``torch.manual_seed(seed)`` in a forked RNG (the global state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
