"""What every distillation objective provides, and what it is handed.

The training loop knows nothing objective-specific. An objective declares

- ``trainable()``: its parameter groups ("student", "critic"), each stepped by its own AdamW with
  the settings in ``optim[group]`` (``objective.optim.<group>.{lr, betas, weight_decay, grad_clip}``);
- ``updates(step)``: which groups step at ``step``, in order (two time-scale rules live here);
- ``needs_videos``: whether its losses read real latents (the loop refuses prompt-only data then);
- ``feeds_rewards`` (default True): whether its generator loss returns the student's single-step
  prediction ``x0`` for reward feedback (a reward configured for one that does not is an error);
- ``generator_loss`` / ``critic_loss``: the losses of those groups;
- ``student``: the adapter it trains as the few-step student (None when it trains none), which it
  adds itself from the run's ``student`` settings (``add_student``); ``sampler(steps, guidance)``:
  how that student samples, a ``turbo.sampling.Sampler`` the run saves as ``student/sampler.json``;

and the loop follows. Adding an objective is one file here plus one ``conf/objective/*.yaml``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbo.config import ConfigError
from turbo.denoiser import Denoiser, Role
from turbo.sampling import Rows, Sampler
from turbo.text import TextCond

OPTIM_KEYS = {"optimizer", "grad_clip"}


def adamw(lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
          grad_clip: float = 1.0) -> dict[str, Any]:
    """One group's ``optim`` entry as a config gives it (objectives built in code, tests)."""
    return {"optimizer": functools.partial(torch.optim.AdamW, lr=lr, betas=tuple(betas), weight_decay=weight_decay),
            "grad_clip": grad_clip}


@dataclass
class Batch:
    """One training batch. ``latents``: B,C,F,H,W normalised VAE latents of real videos (None for
    prompt-only data); ``latent_shape``: C,F,H,W of one latent (what generators sample);
    ``cond`` / ``uncond``: text conditioning of the prompts and of ""; ``rows``: which rows of the
    global batch this process holds (random draws per row go through ``rows.draw``)."""

    prompts: list[str]
    cond: TextCond
    uncond: TextCond
    latent_shape: tuple[int, ...]
    latents: Tensor | None = None
    rows: Rows = Rows()

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Losses:
    """Named scalar loss terms (their sum is minimised) and, for reward feedback, the student's
    single-step prediction ``x0`` (B,C,F,H,W latents, differentiable w.r.t. the student)."""

    terms: dict[str, Tensor] = field(default_factory=dict)
    x0: Tensor | None = None

    def total(self) -> Tensor:
        return torch.stack(list(self.terms.values())).sum()


class Objective(Protocol):
    """The protocol the loop drives. An objective may subclass it for the defaults below: one
    group "student" (its adapter) stepping every step, no critic, nothing to track, save or export
    beyond the student LoRA."""

    name: str
    needs_videos: bool
    optim: dict[str, dict[str, Any]]
    student: str | None  # the adapter trained as the few-step student, or None
    denoiser: Denoiser
    feeds_rewards: bool = True

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        """Its parameter groups; by default the student adapter alone."""
        return {"student": self.denoiser.adapter_parameters(self.student)}

    def generator_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses: ...

    def sampler(self, steps: int, guidance: float | None = None) -> Sampler:
        """How the student samples with ``steps`` steps (``guidance``: the w of a guidance embedding)."""
        ...

    def updates(self, step: int) -> list[str]:
        return ["student"]

    def critic_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses:
        raise RuntimeError(f"objective {self.name!r} has no critic")  # its updates() never ask for one

    def after_step(self, group: str) -> None:
        """Called after the optimizer of ``group`` stepped (EMA targets update here)."""

    def extra_state(self) -> dict[str, Tensor]:
        """Trained tensors that are not adapters (a GAN head), for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def export(self, folder: Path) -> None:
        """Write what the objective trained beyond the student LoRA (a pre-trained teacher) into
        the run folder at the end of a run."""


@torch.no_grad()
def ema_(averages: list[Tensor], params: list[Tensor], decay: float) -> None:
    """The one exponential moving average of the objectives: ``a <- decay * a + (1 - decay) * p``
    in place (CD's EMA target adapter, the diffusion objective's exported weights). A fixed decay,
    as LCM / T2V-Turbo use it; diffusers' ``EMAModel`` ramps its decay as (1 + n) / (10 + n) and keeps
    shadow copies outside the network, where CD's target must be an adapter it can run as a role."""
    torch._foreach_lerp_(averages, [p.detach() for p in params], 1.0 - decay)


def add_student(denoiser: Denoiser, name: str, adapter: Mapping[str, Any] | None) -> None:
    """Give ``denoiser`` the student adapter ``name`` from the run's ``student`` settings (rank,
    alpha, target_modules, dropout, guidance_embedding). ``adapter=None``: the caller added it."""
    if adapter is None:
        if name not in denoiser.adapters:
            raise ValueError(f"objective.student={name!r} is not an adapter of the denoiser ({denoiser.adapters}) "
                             f"and no student settings were given to add it")
        return
    if name in denoiser.adapters:
        raise ValueError(f"objective.student={name!r}: the denoiser already has an adapter of that name")
    a = dict(adapter)
    denoiser.add_adapter(name, rank=int(a["rank"]), alpha=float(a["alpha"]), target_modules=list(a["target_modules"]),
                         dropout=float(a.get("dropout", 0.0)), guidance_embedding=bool(a.get("guidance_embedding", False)))


def group_loss(objective: Objective, group: str, batch: Batch, step: int, generator: torch.Generator) -> Losses:
    """The loss of one parameter group at ``step``: the critic's, or the generator's for the rest."""
    if group == "critic":
        return objective.critic_loss(batch, step, generator)
    return objective.generator_loss(batch, step, generator)


def check_optim(optim: Mapping[str, Mapping[str, Any]], groups: list[str]) -> dict[str, dict[str, Any]]:
    """Validate ``objective.optim``: one entry per trainable group, each an ``optimizer`` (a Hydra
    ``_partial_`` node, instantiated by then: ``params -> torch.optim.Optimizer``) and a ``grad_clip``.
    ``None`` (objectives built in code) gives every group ``adamw()``."""
    if optim is None:
        optim = {g: adamw() for g in groups}
    optim = {k: dict(v) for k, v in optim.items()}
    if set(optim) != set(groups):
        raise ConfigError(f"objective.optim must have one entry per trainable group {groups}, found {sorted(optim)}")
    for group, o in optim.items():
        if set(o) != OPTIM_KEYS:
            raise ConfigError(f"objective.optim.{group} must have keys {sorted(OPTIM_KEYS)}, found {sorted(o)}")
        if not callable(o["optimizer"]):
            raise ConfigError(f"objective.optim.{group}.optimizer must be an optimizer node with _partial_: true "
                              f"(e.g. {{_target_: torch.optim.AdamW, _partial_: true, lr: 1e-4}}), found {o['optimizer']!r}")
    return optim


def noise_like(x: Tensor, generator: torch.Generator, rows: Rows = Rows()) -> Tensor:
    """Gaussian noise of x's shape drawn from a CPU generator (reproducible on any device), per row
    of the global batch (``rows``)."""
    return rows.draw(lambda n: torch.randn((n, *x.shape[1:]), generator=generator), len(x)).to(x.device, x.dtype)


def denoising_loss(denoiser: Denoiser, x0: Tensor, cond: TextCond, role: Role, generator: torch.Generator,
                   lo: int = 0, hi: int | None = None, rows: Rows = Rows()) -> Tensor:
    """The ordinary diffusion loss of the schedule in use: t ~ U[lo, hi), x_t = add_noise(x0, eps, t),
    MSE between the raw output of ``role`` and ``schedule.target`` (eps / v for VP, velocity for flow)."""
    schedule = denoiser.schedule
    t = rows.draw(lambda n: schedule.sample_t(n, lo, hi, generator=generator, device=x0.device), len(x0))
    noise = noise_like(x0, generator, rows)
    pred = denoiser(schedule.add_noise(x0, noise, t), t, cond, role=role)
    return F.mse_loss(pred.out.float(), schedule.target(x0, noise, t).float())
