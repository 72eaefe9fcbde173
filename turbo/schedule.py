"""Noise schedules: the only place that knows how noise is added and how a
network's raw output turns into x0 and eps.

Both schedules are written in one form, ``x_t = alpha(t) * x0 + sigma(t) * eps``,
over an integer timestep index ``t`` in ``0 .. T-1`` (T = ``num_train_timesteps``):

- ``VPSchedule``: DDPM betas; ``alpha = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``;
  the network predicts eps or v (``v = alpha * eps - sigma * x0``). ModelScope,
  VideoCrafter2, SD-family UNets.
- ``FlowSchedule``: rectified flow; ``alpha = 1 - s``, ``sigma = s`` with
  ``s = shift(u) = shift * u / (1 + (shift - 1) * u)`` and ``u = (t + 1) / T``;
  the network predicts the velocity ``v = eps - x0``. Wan, HunyuanVideo.
  The network is fed ``T * s`` as its timestep, as diffusers'
  ``FlowMatchEulerDiscreteScheduler`` does.

Because both share that form, one DDIM step ``x_prev = alpha(t') x0 + sigma(t') eps``
serves both: for the flow schedule it is exactly the Euler step
``x_t + (s' - s) v`` (expand both sides). Objectives and samplers use
``ddim_step`` and never special-case the schedule.

Tensor contract: ``t`` is a 1-D long tensor of length B (or a python int);
``x0``, ``eps``, ``x_t`` and raw outputs share a shape B, ... (any trailing dims).
Coefficients are computed in float64 and cast to the sample's dtype.

Sampling grids. Training and the default samplers live on the integer index grid above. A
deterministic sampler follows a ``SamplingPlan``: the timesteps it evaluates the network at and the
timestep each step lands on, as indices of a schedule. ``Schedule.sampling_plan(steps, grid)``
makes one:

- ``grid="index"`` (the default): ``inference_timesteps`` ("trailing" spacing), each step landing on
  the next timestep and the last on the clean end.
- ``grid="diffusers"``: the grid of the diffusers scheduler the family ships with, so that our
  teacher sampler reproduces the diffusers pipeline step for step. Flow: ``FlowMatchEulerDiscreteScheduler
  .set_timesteps(n)``, whose sigmas are continuous (``flow_match_plan``); they are carried by a
  ``GridSchedule``, a schedule of explicit points indexed 0..n-1, so every conversion and the
  DDIM/Euler step stay the ones above. VP: ``DDIMScheduler`` with "leading" spacing,
  ``steps_offset=1`` and ``set_alpha_to_one=False`` (the SD / ModelScope scheduler config;
  ``ddim_plan`` also does "trailing").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "flow"]


def _expand(coef: Tensor, like: Tensor) -> Tensor:
    """B coefficients -> B,1,1,... broadcastable against ``like``, in its dtype."""
    return coef.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _as_index(t: Tensor | int, n: int | None = None) -> Tensor:
    if isinstance(t, int):
        t = torch.full((n or 1,), t, dtype=torch.long)
    return t.long().reshape(-1)


class Schedule(ABC):
    """Common code of the schedules; subclasses fill ``alphas`` and ``sigmas`` (float64, length T)."""

    prediction_type: PredictionType
    num_train_timesteps: int
    alphas: Tensor  # alpha(t) for t = 0..T-1
    sigmas: Tensor  # sigma(t) for t = 0..T-1

    # --- coefficients -----------------------------------------------------------------
    def alpha_sigma(self, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) shaped to broadcast against ``like``."""
        idx = _as_index(t, like.shape[0]).cpu()
        if idx.min() < 0 or idx.max() >= self.num_train_timesteps:
            raise ValueError(
                f"timestep index out of range: expected 0..{self.num_train_timesteps - 1}, "
                f"found {idx.min().item()}..{idx.max().item()}"
            )
        return _expand(self.alphas[idx], like), _expand(self.sigmas[idx], like)

    @abstractmethod
    def model_timestep(self, t: Tensor | int) -> Tensor:
        """What the network is fed as its timestep (float, length B)."""

    # --- forward process --------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps."""
        a, s = self.alpha_sigma(t, x0)
        return a * x0 + s * noise

    # --- conversions of the network's raw output --------------------------------------
    def to_x0_eps(self, out: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """(x0, eps) implied by the raw output ``out`` at (x_t, t)."""
        a, s = self.alpha_sigma(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - s * out) / a, out
        if self.prediction_type == "v_prediction":  # VP: a^2 + s^2 = 1
            return a * x_t - s * out, s * x_t + a * out
        # flow: v = eps - x0, x_t = (1 - s) x0 + s eps
        return x_t - s * out, x_t + a * out

    def to_x0(self, out: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
        return self.to_x0_eps(out, x_t, t)[0]

    def target(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """The raw output a perfect network gives at x_t = add_noise(x0, noise, t):
        the regression target of the ordinary denoising loss."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a, s = self.alpha_sigma(t, x0)
            return a * noise - s * x0
        return noise - x0

    # --- solver -----------------------------------------------------------------------
    def ddim_step(self, x0: Tensor, eps: Tensor, t_prev: Tensor | int | None) -> Tensor:
        """Deterministic DDIM step to ``t_prev``: alpha(t') x0 + sigma(t') eps.
        ``t_prev=None`` means the clean end of the chain (alpha 1, sigma 0): returns x0.
        For the flow schedule this is the Euler step of the probability-flow ODE."""
        if t_prev is None:
            return x0
        a, s = self.alpha_sigma(t_prev, x0)
        return a * x0 + s * eps

    # --- timesteps --------------------------------------------------------------------
    def sample_t(self, n: int, lo: int = 0, hi: int | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        """n training timestep indices uniform on [lo, hi) (hi defaults to T)."""
        hi = self.num_train_timesteps if hi is None else hi
        if not 0 <= lo < hi <= self.num_train_timesteps:
            raise ValueError(f"timestep range must satisfy 0 <= lo < hi <= {self.num_train_timesteps}, found [{lo}, {hi})")
        return torch.randint(lo, hi, (n,), generator=generator).to(device)

    def ddim_grid(self, num_steps: int) -> Tensor:
        """The DDIM solver grid of LCM / T2V-Turbo, ascending: ``arange(1..N) * (T // N) - 1``
        (N=50 -> 19, 39, ..., 999)."""
        step = self.num_train_timesteps // num_steps
        if step < 1:
            raise ValueError(f"num_steps must be in 1..{self.num_train_timesteps}, found {num_steps}")
        return torch.arange(1, num_steps + 1, dtype=torch.long) * step - 1

    def inference_timesteps(self, num_steps: int) -> Tensor:
        """Descending sampling timesteps spread evenly ("trailing" spacing, which starts at T-1
        as Wan and the LCM grid do): for T=1000, 4 steps -> 999, 749, 499, 249."""
        return trailing_timesteps(num_steps, self.num_train_timesteps)

    def sampling_plan(self, num_steps: int, grid: str = "index") -> "SamplingPlan":
        """The deterministic sampler's plan for ``num_steps`` steps on ``grid`` ("index" or
        "diffusers", see the module docstring)."""
        if grid == "index":
            ts = self.inference_timesteps(num_steps).tolist()
            return SamplingPlan(self, tuple(ts), (*ts[1:], None))
        if grid == "diffusers":
            return self._diffusers_plan(num_steps)
        raise ValueError(f"sampler grid must be one of {list(GRIDS)}, found {grid!r}")

    def _diffusers_plan(self, num_steps: int) -> "SamplingPlan":
        raise ValueError(f"{type(self).__name__} has no diffusers sampling grid")


def _betas(kind: str, beta_start: float, beta_end: float, T: int) -> Tensor:
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":  # SD / ModelScope / VideoCrafter2
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    raise ValueError(f"schedule.beta_schedule must be 'linear' or 'scaled_linear', found {kind!r}")


class VPSchedule(Schedule):
    """Variance-preserving DDPM schedule with eps- or v-prediction (defaults: SD / ModelScope)."""

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
                 prediction_type: PredictionType = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"schedule.prediction_type for a VP schedule must be 'epsilon' or "
                             f"'v_prediction', found {prediction_type!r}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        abar = torch.cumprod(1.0 - _betas(beta_schedule, beta_start, beta_end, num_train_timesteps), 0)
        self.alphas_cumprod = abar
        self.alphas = abar.sqrt()
        self.sigmas = (1.0 - abar).sqrt()

    def model_timestep(self, t: Tensor | int) -> Tensor:
        return _as_index(t).float()

    def _diffusers_plan(self, num_steps: int) -> "SamplingPlan":
        return ddim_plan(self, num_steps, spacing="leading", steps_offset=1, set_alpha_to_one=False)

    def __repr__(self) -> str:
        return f"VPSchedule(T={self.num_train_timesteps}, prediction_type={self.prediction_type!r})"


class FlowSchedule(Schedule):
    """Rectified flow with a timestep shift, velocity prediction (Wan: shift 3..8)."""

    def __init__(self, shift: float = 3.0, num_train_timesteps: int = 1000):
        if shift <= 0:
            raise ValueError(f"schedule.shift must be > 0, found {shift}")
        self.prediction_type = "flow"
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        s = shift * u / (1.0 + (shift - 1.0) * u)
        self.alphas = 1.0 - s
        self.sigmas = s

    def model_timestep(self, t: Tensor | int) -> Tensor:
        return (self.sigmas[_as_index(t).cpu()] * self.num_train_timesteps).float()

    def _diffusers_plan(self, num_steps: int) -> "SamplingPlan":
        return flow_match_plan(self, num_steps)

    def __repr__(self) -> str:
        return f"FlowSchedule(T={self.num_train_timesteps}, shift={self.shift})"


class GridSchedule(Schedule):
    """A schedule of explicit points: index ``i`` in 0..N-1 is (alpha_i, sigma_i) with the network
    fed ``model_timesteps[i]``. It carries a continuous-time sampling grid (points off the integer
    training grid) through the integer-index machinery every schedule shares; only samplers use it
    (``SamplingPlan.schedule``), never training."""

    def __init__(self, prediction_type: PredictionType, alphas: Tensor, sigmas: Tensor, model_timesteps: Tensor):
        if not len(alphas) == len(sigmas) == len(model_timesteps):
            raise ValueError(f"a grid needs one alpha, sigma and network timestep per point, found "
                             f"{len(alphas)}, {len(sigmas)}, {len(model_timesteps)}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = len(sigmas)
        self.alphas = alphas.double()
        self.sigmas = sigmas.double()
        self.model_timesteps = model_timesteps.float()

    def model_timestep(self, t: Tensor | int) -> Tensor:
        return self.model_timesteps[_as_index(t).cpu()]

    def __repr__(self) -> str:
        return f"GridSchedule(points={self.num_train_timesteps}, prediction_type={self.prediction_type!r})"


@dataclass(frozen=True)
class SamplingPlan:
    """A deterministic sampler's itinerary: step ``i`` evaluates the network at ``timesteps[i]`` and
    lands on ``targets[i]`` (None: the clean end, alpha 1 and sigma 0), both indices of
    ``schedule`` (the model's own, or a ``GridSchedule`` of continuous points). Normally a step
    lands on the next timestep; diffusers' DDIM lands on ``t - T // n``, which is not the next
    trailing timestep when n does not divide T, and its last step may land on index 0."""

    schedule: Schedule
    timesteps: tuple[int, ...]
    targets: tuple[int | None, ...]

    def __post_init__(self):
        if len(self.timesteps) != len(self.targets) or not self.timesteps:
            raise ValueError(f"a sampling plan needs one target per timestep (at least one), found "
                             f"{len(self.timesteps)} timesteps and {len(self.targets)} targets")


GRIDS = ("index", "diffusers")


def trailing_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> Tensor:
    """``num_steps`` descending timesteps of a ``num_train_timesteps`` grid spread evenly, "trailing"
    (``round(arange(T, 0, -T / n)) - 1``, starting at T-1): 4 of 1000 -> 999, 749, 499, 249."""
    _check_steps(num_steps, num_train_timesteps)
    T = num_train_timesteps
    return (torch.round(torch.arange(T, 0, -T / num_steps, dtype=torch.float64)).long() - 1)[:num_steps]


def _check_steps(num_steps: int, most: int) -> None:
    if not 1 <= num_steps <= most:
        raise ValueError(f"num_steps must be in 1..{most}, found {num_steps}")


def flow_match_plan(schedule: FlowSchedule, num_steps: int) -> SamplingPlan:
    """The grid of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(n)`` (static
    shift), read from the scheduler itself: its sigmas are the plan's points (alpha = 1 - sigma),
    its timesteps what the network gets; the step after the last point lands on sigma 0 (clean)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    _check_steps(num_steps, schedule.num_train_timesteps)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=schedule.num_train_timesteps, shift=schedule.shift)
    ref.set_timesteps(num_steps)
    sigmas = ref.sigmas[:num_steps].to(torch.float32)
    grid = GridSchedule("flow", 1.0 - sigmas.double(), sigmas.double(), ref.timesteps.to(torch.float32))
    idx = list(range(num_steps))
    return SamplingPlan(grid, tuple(idx), (*idx[1:], None))


def ddim_plan(schedule: VPSchedule, num_steps: int, spacing: str = "leading", steps_offset: int = 1,
              set_alpha_to_one: bool = False) -> SamplingPlan:
    """The itinerary of diffusers' deterministic ``DDIMScheduler`` (eta 0), its timesteps read from
    ``set_timesteps`` (``spacing`` "leading" or "trailing"); every step lands on ``t - T // n``, as
    its ``step`` does; a landing below 0 is the clean end (``set_alpha_to_one``) or index 0 (the
    alpha-bar of the first training timestep)."""
    from diffusers import DDIMScheduler

    T = schedule.num_train_timesteps
    _check_steps(num_steps, T)
    if spacing not in ("leading", "trailing"):
        raise ValueError(f"DDIM spacing must be 'leading' or 'trailing', found {spacing!r}")
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=steps_offset,
                        set_alpha_to_one=set_alpha_to_one)
    ref.set_timesteps(num_steps)
    timesteps = [int(t) for t in ref.timesteps]
    if max(timesteps) >= T:
        raise ValueError(f"steps_offset={steps_offset} puts the first DDIM timestep at {max(timesteps)}, past T-1={T - 1}")
    end = None if set_alpha_to_one else 0
    targets = [t - T // num_steps if t - T // num_steps >= 0 else end for t in timesteps]
    return SamplingPlan(schedule, tuple(timesteps), tuple(targets))


@dataclass(frozen=True)
class ConsistencyBoundary:
    """LCM boundary-condition scalings (``LCMScheduler.get_scalings_for_boundary_condition_discrete``,
    equal to it in tests/turbo/test_schedule.py; kept here because the scheduler fixes sigma_data at
    0.5 and the CD objective exposes it) (sigma_data 0.5, timestep_scaling 10 in LCM / T2V-Turbo):
    ``c_skip = sd^2 / ((s t)^2 + sd^2)``, ``c_out = s t / sqrt((s t)^2 + sd^2)`` with t the
    integer timestep, so a consistency function ``f = c_skip x_t + c_out x0(x_t)`` is x_t at t=0."""

    sigma_data: float = 0.5
    timestep_scaling: float = 10.0

    def __call__(self, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
        st = _as_index(t, like.shape[0]).double() * self.timestep_scaling
        sd2 = self.sigma_data ** 2
        return _expand(sd2 / (st ** 2 + sd2), like), _expand(st / torch.sqrt(st ** 2 + sd2), like)


def lcm_timesteps(num_steps: int, grid: Tensor) -> Tensor:
    """LCM's multistep inference timesteps taken from the distillation grid, descending:
    the 50-step grid and 4 steps give 999, 759, 519, 279."""
    if not 1 <= num_steps <= len(grid):
        raise ValueError(f"num_steps must be in 1..{len(grid)} (the distillation grid), found {num_steps}")
    skip = len(grid) // num_steps
    return grid.flip(0)[::skip][:num_steps]


__all__ = ["Schedule", "VPSchedule", "FlowSchedule", "GridSchedule", "SamplingPlan", "GRIDS", "ConsistencyBoundary",
           "lcm_timesteps", "trailing_timesteps", "flow_match_plan", "ddim_plan"]
