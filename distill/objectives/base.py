"""What every distillation objective provides, and what it is handed.

The training loop knows nothing objective-specific: it asks an objective for its losses, its
trainable parameter groups and whether it needs real videos, and follows. Adding an objective is
one file here plus one ``conf/objective/*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from turbo.text import TextCond


@dataclass
class Batch:
    """One training batch. ``latents``: B,C,F,H,W normalised VAE latents of real videos (None for
    prompt-only data); ``cond`` / ``uncond``: text conditioning of the prompts and of ""."""

    prompts: list[str]
    cond: TextCond
    uncond: TextCond
    latents: Tensor | None = None


@dataclass
class Losses:
    """Named scalar loss terms (their sum is minimised) and, for reward feedback, the student's
    single-step prediction ``x0`` (B,C,F,H,W latents, differentiable w.r.t. the student)."""

    terms: dict[str, Tensor] = field(default_factory=dict)
    x0: Tensor | None = None

    def total(self) -> Tensor:
        return torch.stack(list(self.terms.values())).sum()


class Objective(Protocol):
    name: str
    needs_videos: bool  # the generator loss reads ``batch.latents``

    def generator_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses: ...

    def critic_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses | None: ...

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups by name ("student", "critic"), each stepped by its own optimizer."""
        ...

    def sample(self, cond: TextCond, shape: tuple[int, ...], steps: int, generator: torch.Generator,
               guidance: float | None = None) -> Tensor:
        """The student's own few-step sampler (latents B,C,F,H,W, B = len(cond))."""
        ...

    def after_step(self, group: str) -> None:
        """Called after the optimizer of ``group`` stepped (EMA targets update here)."""
        ...
