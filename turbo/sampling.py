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

``Sampler`` is how a model is meant to be sampled, as one value: which of the loops, with which
settings. Every objective says how its student samples (``Objective.sampler``) and the run writes
it to ``student/sampler.json`` (``Sampler.save``), so ``turbo-generate lora=<run>/student``,
``turbo-eval`` and the long-video loop sample a CD, DMD2 or W2S student as it was trained.

Each takes an optional ``after_step(x, t) -> x`` hook, called whenever the running sample ``x``
has just been brought to timestep ``t``: on the initial noise (``t`` = the first timestep), after
every step (``t`` = the next timestep) and on the result (``t=None``, clean). It may return a
modified sample (``turbo.long_video`` uses it for RePaint-style replacement of known frames).
Without it (the default) the samplers are unchanged, down to their random draws.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from turbo.denoiser import Denoiser, Role
from turbo.schedule import GRIDS, ConsistencyBoundary, SamplingPlan, lcm_timesteps, trailing_timesteps
from turbo.text import TextCond
from turbo.timing import cfg_nfe

AfterStep = Callable[[Tensor, "int | None"], Tensor]


def _hook(after_step: AfterStep | None, x: Tensor, t: int | None) -> Tensor:
    return x if after_step is None else after_step(x, t)


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    return torch.randn(shape, generator=generator).to(device)


@dataclass(frozen=True)
class Rows:
    """This process's rows of a batch split over processes: ``rank, rank + world, ...`` of ``total``.

    What is drawn per row through ``draw`` does not depend on the split: every process draws for the
    whole batch from the same generator and keeps its own rows, so 2 processes train on exactly the
    noise, timesteps and guidance scales that 1 process draws for the same global batch. (Hand-written:
    accelerate shards data, not the random draws made for it.)"""

    rank: int = 0
    world: int = 1
    total: int | None = None  # the whole batch; None: this process holds all of it

    def draw(self, make: Callable[[int], Tensor], local: int) -> Tensor:
        """``make(n)``: n rows of randomness; returns this process's ``local`` of them."""
        if self.world == 1:
            return make(local)
        rows = make(self.total)[self.rank::self.world]
        if len(rows) != local:
            raise ValueError(f"Rows: rank {self.rank} of {self.world} holds {len(rows)} of {self.total} rows, "
                             f"found a batch of {local}")
        return rows


@torch.no_grad()
def sample_teacher(denoiser: Denoiser, cond: TextCond, uncond: TextCond | None, shape: tuple[int, ...],
                   steps: int, guidance_scale: float, generator: torch.Generator, role: Role = "teacher",
                   after_step: AfterStep | None = None, grid: str | SamplingPlan = "index") -> Tensor:
    """DDIM / Euler sampling with Imagen-form CFG (``guidance_scale`` 1 or ``uncond=None``: no CFG).
    ``shape`` = C,F,H,W of one latent; batch size = len(cond). ``grid``: "index", "diffusers"
    (``Schedule.sampling_plan``) or a ready ``SamplingPlan`` of ``steps`` steps (e.g.
    ``turbo.schedule.ddim_plan(..., spacing="trailing")``); the network runs on the plan's schedule
    (passed to each call, the denoiser is not changed), and ``after_step`` gets indices of it (on the
    "index" grid: of ``denoiser.schedule`` itself)."""
    plan = grid if isinstance(grid, SamplingPlan) else denoiser.schedule.sampling_plan(steps, grid)
    if len(plan.timesteps) != steps:
        raise ValueError(f"the sampling plan has {len(plan.timesteps)} steps, but steps={steps}")
    x = initial_noise((len(cond), *shape), generator, cond.embeds.device)
    x = _hook(after_step, x, plan.timesteps[0])
    for t, t_prev in zip(plan.timesteps, plan.targets):
        if uncond is None or guidance_scale == 1.0:
            pred = denoiser(x, t, cond, role=role, schedule=plan.schedule)
        else:
            pred = denoiser.cfg(x, t, cond, uncond, guidance_scale, role=role, schedule=plan.schedule)
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
    b = len(cond)
    x = initial_noise((b, *shape), generator, cond.embeds.device)
    w = None if guidance is None else torch.full((b,), float(guidance), device=x.device)
    timesteps = lcm_timesteps(steps, denoiser.schedule.ddim_grid(grid_steps)).tolist()
    x = _hook(after_step, x, timesteps[0])
    return _fixed_step_chain(denoiser, cond, x, timesteps, None, generator, role, after_step, guidance=w,
                             boundary=boundary)


def _fixed_step_chain(denoiser: Denoiser, cond: TextCond, x: Tensor, timesteps: list[int], end: int | None,
                      generator: torch.Generator, role: Role, after_step: AfterStep | None = None,
                      rows: Rows = Rows(), guidance: Tensor | None = None,
                      boundary: ConsistencyBoundary | None = None) -> Tensor:
    """At each timestep predict x0 (with ``boundary``: the consistency function ``c_skip x + c_out x0``),
    then re-noise it with fresh noise to the next timestep (or to ``end`` after the last one;
    ``end=None`` returns the last x0). ``after_step`` is applied to the sample after each step (not
    to the input ``x``)."""
    for i, t in enumerate(timesteps):
        x0 = denoiser(x, t, cond, role=role, guidance=guidance).x0
        if boundary is not None:
            c_skip, c_out = boundary(t, x)
            x0 = c_skip * x + c_out * x0
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else end
        if nxt is not None:
            noise = rows.draw(lambda n: initial_noise((n, *x.shape[1:]), generator, x.device), len(x))
        x = x0 if nxt is None else denoiser.schedule.add_noise(x0, noise, nxt)
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
                        generator: torch.Generator, role: Role = "student", rows: Rows = Rows()) -> Tensor:
    """DMD2's backward simulation: the student's own noisy input at ``timesteps[k]``, made by running
    its chain from ``noise`` over ``timesteps[:k]`` without gradients (k = 0: the noise itself)."""
    if k == 0:
        return noise
    return _fixed_step_chain(denoiser, cond, noise, list(timesteps[:k]), timesteps[k], generator, role, rows=rows)


# --- a sampler as one value -------------------------------------------------------------------------
SAMPLER_FILE = "sampler.json"
# the settings each kind reads (the rest of the dataclass is ignored by it and not written)
SAMPLER_KEYS = {"teacher": ("steps", "guidance_scale", "grid"),
                "consistency": ("steps", "grid_steps", "guidance", "sigma_data", "timestep_scaling"),
                "fixed": ("timesteps",)}


class SamplerError(ValueError):
    """A sampler description (a config node or a sampler.json) that cannot be sampled with."""


@dataclass(frozen=True)
class Sampler:
    """How a model samples: ``name`` "teacher" (DDIM / Euler with CFG ``guidance_scale`` on
    ``grid``), "consistency" (LCM multistep on the CD grid of ``grid_steps``; ``guidance`` is the w
    of a student's guidance embedding, ignored without one) or "fixed" (DMD2's ``timesteps``)."""

    name: str
    steps: int = 4
    guidance_scale: float = 1.0
    grid: str = "index"
    grid_steps: int = 50
    guidance: float | None = None
    boundary: ConsistencyBoundary = field(default_factory=ConsistencyBoundary)
    timesteps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in SAMPLER_KEYS:
            raise SamplerError(f"sampler name {self.name!r} is not a sampler; choose one of {sorted(SAMPLER_KEYS)}")
        if self.name == "fixed" and not self.timesteps:
            raise SamplerError("a fixed-timestep sampler needs at least one timestep, e.g. [999, 749, 499, 249]")
        if self.name != "fixed" and self.steps < 1:
            raise SamplerError(f"steps must be >= 1, found {self.steps}")
        if self.name == "teacher" and self.grid not in GRIDS:
            raise SamplerError(f"grid must be one of {list(GRIDS)}, found {self.grid!r}")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) if self.name == "fixed" else self.steps

    @property
    def nfe(self) -> int:
        """Network evaluations per sample (CFG runs two per step)."""
        return cfg_nfe(self.steps, self.guidance_scale) if self.name == "teacher" else self.num_steps

    def __call__(self, denoiser: Denoiser, cond: TextCond, uncond: TextCond | None, shape: tuple[int, ...],
                 generator: torch.Generator, role: Role, after_step: AfterStep | None = None) -> Tensor:
        """Latents B,C,F,H,W (B = len(cond)); ``shape`` = C,F,H,W. ``uncond`` is read by "teacher" only."""
        if self.name == "teacher":
            return sample_teacher(denoiser, cond, uncond, shape, self.steps, self.guidance_scale, generator, role=role,
                                  grid=self.grid, after_step=after_step)
        if self.name == "consistency":
            return sample_consistency(denoiser, cond, shape, self.steps, generator, grid_steps=self.grid_steps,
                                      guidance=self.guidance, boundary=self.boundary, role=role, after_step=after_step)
        return sample_fixed_steps(denoiser, cond, shape, list(self.timesteps), generator, role=role,
                                  after_step=after_step)

    def with_steps(self, steps: int | None = None, guidance: float | None = None,
                   num_train_timesteps: int = 1000) -> "Sampler":
        """The same sampler with another step count (a fixed-timestep sampler then takes evenly
        spread "trailing" timesteps, ``turbo.schedule.trailing_timesteps``) and, for consistency, another w."""
        out = self
        if guidance is not None:
            if self.name != "consistency":
                raise SamplerError(f"a guidance (w) override is for consistency samplers; this one is {self.name!r}"
                                   + (" (set its guidance_scale instead)" if self.name == "teacher" else ""))
            out = replace(out, guidance=float(guidance))
        if steps is None or steps == self.num_steps:
            return out
        if self.name != "fixed":
            return replace(out, steps=int(steps))
        if not 1 <= steps <= num_train_timesteps:
            raise SamplerError(f"sampler steps must be in 1..{num_train_timesteps}, found {steps}")
        return replace(out, timesteps=tuple(trailing_timesteps(steps, num_train_timesteps).tolist()))

    def to_dict(self) -> dict:
        """The settings its kind reads, as JSON values (``from_dict`` inverts it)."""
        flat = {**asdict(self), **asdict(self.boundary)}
        flat["timesteps"] = list(self.timesteps)
        return {"name": self.name, **{k: flat[k] for k in SAMPLER_KEYS[self.name]}}

    @classmethod
    def from_dict(cls, data, where: str = "sampler") -> "Sampler":
        """A sampler from ``to_dict``'s form; ``where`` (a file, a config key) names it in errors."""
        if not isinstance(data, dict) or data.get("name") not in SAMPLER_KEYS:
            name = data.get("name") if isinstance(data, dict) else None
            raise SamplerError(f"{where}: 'name' must be one of {sorted(SAMPLER_KEYS)}, found {name!r}")
        name, keys = data["name"], SAMPLER_KEYS[data["name"]]
        unknown, missing = sorted(set(data) - {"name", *keys}), sorted(set(keys) - set(data))
        if unknown or missing:
            raise SamplerError(f"{where}: a {name!r} sampler holds {list(keys)}"
                               + (f"; unknown keys {unknown}" if unknown else "")
                               + (f"; missing {missing}" if missing else ""))
        try:
            values = {k: READ[k](data[k]) for k in keys}
            boundary = {k: values.pop(k) for k in asdict(ConsistencyBoundary()) if k in values}
            return cls(name, **values, **({"boundary": ConsistencyBoundary(**boundary)} if boundary else {}))
        except (TypeError, ValueError) as e:
            raise SamplerError(f"{where}: {e}") from None

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/sampler.json`` (atomically)."""
        from turbo.atomic import atomic_write_text

        path = Path(folder) / SAMPLER_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, key: str = "lora") -> "Sampler":
        """``folder/sampler.json`` (plain JSON: nothing in it runs); errors name the file and ``key``."""
        path = Path(folder) / SAMPLER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{key}={folder}: no {SAMPLER_FILE} in it (turbo-train writes one beside the "
                                    f"LoRA); give the sampler explicitly, e.g. sampler.name=teacher")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SamplerError(f"{path}: is not JSON ({e})") from None
        return cls.from_dict(data, str(path))


def _int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplerError(f"expected an integer, found {value!r}")
    return value


def _timesteps(ts) -> tuple[int, ...]:
    if not isinstance(ts, (list, tuple)) or not all(isinstance(t, int) and 0 <= t < 1000 for t in ts):
        raise SamplerError(f"timesteps must be a list of integers in [0, 999], found {ts!r}")
    return tuple(int(t) for t in ts)


# how ``Sampler.from_dict`` reads each setting of a sampler.json (JSON value -> the field's value)
READ = {"steps": _int, "grid_steps": _int, "guidance_scale": float, "grid": str, "timesteps": _timesteps,
        "guidance": lambda g: None if g is None else float(g), "sigma_data": float, "timestep_scaling": float}
