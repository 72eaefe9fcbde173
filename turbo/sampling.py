"""Samplers, written out as loops (diffusers style) over the Denoiser and its Schedule.

- ``sample_teacher``: deterministic DDIM with classifier-free guidance, any step count. For a
  flow schedule the DDIM step is the Euler step (see ``turbo.schedule``), so this one loop is
  DDIM for VP teachers and Euler for flow teachers. ``grid="index"`` (default) samples on our
  integer grid; ``grid="diffusers"`` follows the plan of the diffusers scheduler the family ships
  with (``FlowMatchEulerDiscreteScheduler`` / ``DDIMScheduler``), so that the same noise, prompt
  embeddings, guidance and step count give the diffusers pipeline's latents
  (tests/turbo/test_parity.py).
- ``sample_consistency``: LCM's multistep consistency sampler for CD students: at each step
  predict the boundary-scaled x0, then re-noise it with fresh noise to the next timestep.

All return latents B,C,F,H,W; decode them with ``VideoVAE.decode``.

Each takes an optional ``after_step(x, t) -> x`` hook, called whenever the running sample ``x``
has just been brought to timestep ``t``: on the initial noise (``t`` = the first timestep), after
every step (``t`` = the next timestep) and on the result (``t=None``, clean). It may return a
modified sample (``turbo.long_video`` uses it for RePaint-style replacement of known frames).
Without it (the default) the samplers are unchanged, down to their random draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from turbo.denoiser import Denoiser, Role
from turbo.schedule import ConsistencyBoundary, SamplingPlan, Schedule, lcm_timesteps
from turbo.text import TextCond

AfterStep = Callable[[Tensor, "int | None"], Tensor]


def _hook(after_step: AfterStep | None, x: Tensor, t: int | None) -> Tensor:
    return x if after_step is None else after_step(x, t)


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    return torch.randn(shape, generator=generator).to(device)


@contextmanager
def _on_schedule(denoiser: Denoiser, schedule: Schedule) -> Iterator[None]:
    """Run ``denoiser`` on ``schedule`` (a plan's ``GridSchedule``) for the duration: its timestep
    indices then address the plan's points, in the network's input and in every conversion."""
    own = denoiser.schedule
    denoiser.schedule = schedule
    try:
        yield
    finally:
        denoiser.schedule = own


@torch.no_grad()
def sample_teacher(denoiser: Denoiser, cond: TextCond, uncond: TextCond | None, shape: tuple[int, ...],
                   steps: int, guidance_scale: float, generator: torch.Generator, role: Role = "teacher",
                   after_step: AfterStep | None = None, grid: str | SamplingPlan = "index") -> Tensor:
    """DDIM / Euler sampling with Imagen-form CFG (``guidance_scale`` 1 or ``uncond=None``: no CFG).
    ``shape`` = C,F,H,W of one latent; batch size = len(cond). ``grid``: "index", "diffusers"
    (``Schedule.sampling_plan``) or a ready ``SamplingPlan`` of ``steps`` steps (e.g.
    ``turbo.schedule.ddim_plan(..., spacing="trailing")``); ``after_step`` gets indices of the plan's
    schedule, which is ``denoiser.schedule`` while the hook runs."""
    plan = grid if isinstance(grid, SamplingPlan) else denoiser.schedule.sampling_plan(steps, grid)
    if len(plan.timesteps) != steps:
        raise ValueError(f"the sampling plan has {len(plan.timesteps)} steps, but steps={steps}")
    x = initial_noise((len(cond), *shape), generator, cond.embeds.device)
    with _on_schedule(denoiser, plan.schedule):
        x = _hook(after_step, x, plan.timesteps[0])
        for t, t_prev in zip(plan.timesteps, plan.targets):
            if uncond is None or guidance_scale == 1.0:
                pred = denoiser(x, t, cond, role=role)
            else:
                pred = denoiser.cfg(x, t, cond, uncond, guidance_scale, role=role)
            x = _hook(after_step, plan.schedule.ddim_step(pred.x0, pred.eps, t_prev), t_prev)
    return x


@torch.no_grad()
def sample_consistency(denoiser: Denoiser, cond: TextCond, shape: tuple[int, ...], steps: int,
                       generator: torch.Generator, *, grid_steps: int = 50, guidance: float | None = None,
                       boundary: ConsistencyBoundary = ConsistencyBoundary(), role: Role = "student",
                       after_step: AfterStep | None = None) -> Tensor:
    """LCM multistep sampling on the CD grid (``grid_steps`` = the objective's
    ``num_ddim_timesteps``): 4 steps of the 50-grid are 999, 759, 519, 279. ``guidance`` is the w
    fed to a student with a guidance embedding."""
    schedule = denoiser.schedule
    b = len(cond)
    x = initial_noise((b, *shape), generator, cond.embeds.device)
    w = None if guidance is None else torch.full((b,), float(guidance), device=x.device)
    timesteps = lcm_timesteps(steps, schedule.ddim_grid(grid_steps)).tolist()
    x = _hook(after_step, x, timesteps[0])
    for i, t in enumerate(timesteps):
        pred = denoiser(x, t, cond, role=role, guidance=w)
        c_skip, c_out = boundary(t, x)
        denoised = c_skip * x + c_out * pred.x0
        if i + 1 < len(timesteps):
            x = _hook(after_step, schedule.add_noise(denoised, initial_noise(x.shape, generator, x.device),
                                                     timesteps[i + 1]), timesteps[i + 1])
        else:
            x = _hook(after_step, denoised, None)
    return x



def _fixed_step_chain(denoiser: Denoiser, cond: TextCond, x: Tensor, timesteps: list[int], end: int | None,
                      generator: torch.Generator, role: Role, after_step: AfterStep | None = None) -> Tensor:
    """At each timestep predict x0, then re-noise it with fresh noise to the next timestep (or to
    ``end`` after the last one; ``end=None`` returns the last x0). ``after_step`` is applied to
    the sample after each step (not to the input ``x``)."""
    for i, t in enumerate(timesteps):
        x0 = denoiser(x, t, cond, role=role).x0
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else end
        x = x0 if nxt is None else denoiser.schedule.add_noise(x0, initial_noise(x.shape, generator, x.device), nxt)
        x = _hook(after_step, x, nxt)
    return x


@torch.no_grad()
def sample_fixed_steps(denoiser: Denoiser, cond: TextCond, shape: tuple[int, ...], timesteps: list[int],
                       generator: torch.Generator, role: Role = "student",
                       after_step: AfterStep | None = None) -> Tensor:
    """DMD2's multi-step student sampler on its fixed timestep list (e.g. 999, 749, 499, 249)."""
    x = initial_noise((len(cond), *shape), generator, cond.embeds.device)
    x = _hook(after_step, x, int(timesteps[0]))
    return _fixed_step_chain(denoiser, cond, x, list(timesteps), None, generator, role, after_step)


@torch.no_grad()
def backward_simulation(denoiser: Denoiser, cond: TextCond, noise: Tensor, timesteps: list[int], k: int,
                        generator: torch.Generator, role: Role = "student") -> Tensor:
    """DMD2's backward simulation: the student's own noisy input at ``timesteps[k]``, made by running
    its chain from ``noise`` over ``timesteps[:k]`` without gradients (k = 0: the noise itself)."""
    if k == 0:
        return noise
    return _fixed_step_chain(denoiser, cond, noise, list(timesteps[:k]), timesteps[k], generator, role)
