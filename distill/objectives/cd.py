"""Latent consistency distillation in the T2V-Turbo form (LCM applied to video).

For a real latent x0 and a grid index n ~ U{0..N-1} (grid ``arange(1..N) * (T // N) - 1``):

    t_s   = grid[n],  t = max(t_s - k, 0),  x_s = add_noise(x0, eps, t_s),  w ~ U[w_min, w_max]
    f     = c_skip(t_s) x_s + c_out(t_s) x0_student(x_s, t_s, w)                  (the student)
    x_t   = DDIM step t_s -> t of the teacher with LCM's CFG  x0_c + w (x0_c - x0_u)   (no grad)
    y     = c_skip(t) x_t + c_out(t) x0_target(x_t, t, w)                          (no grad)
    loss  = pseudo-Huber(f - y) = mean(sqrt((f - y)^2 + c^2) - c)     or     mean((f - y)^2)

The target network is the online student (T2V-Turbo's code) or, with ``ema_decay``, an EMA copy
of the student's adapter on the same base (LCM / T2V-Turbo v1 paper: 0.95). ``f`` is the
student's single-step prediction that reward feedback scores. For flow teachers the DDIM step is
the Euler step of the flow ODE (``turbo.schedule``), so the same code distils Wan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.objectives.base import Batch, Losses, Objective, add_student, check_optim, ema_, noise_like
from turbo.denoiser import Denoiser
from turbo.sampling import Sampler
from turbo.schedule import ConsistencyBoundary
from turbo.text import TextCond


class ConsistencyDistillation(Objective):
    # the EMA target is an adapter, checkpointed with the others: no extra state
    name = "cd"
    needs_videos = True

    def __init__(self, denoiser: Denoiser, num_ddim_timesteps: int = 50, skip: int | None = None,
                 w_min: float = 5.0, w_max: float = 15.0, loss: str = "huber", huber_c: float = 0.001,
                 sigma_data: float = 0.5, timestep_scaling: float = 10.0, ema_decay: float | None = None,
                 optim: dict | None = None, student: str = "student", adapter: dict | None = None):
        T = denoiser.schedule.num_train_timesteps
        if not 1 <= num_ddim_timesteps <= T:
            raise ValueError(f"objective.num_ddim_timesteps must be in 1..{T}, found {num_ddim_timesteps}")
        if loss not in ("huber", "l2"):
            raise ValueError(f"objective.loss must be 'huber' or 'l2', found {loss!r}")
        if not w_min <= w_max:
            raise ValueError(f"objective.w_min must be <= objective.w_max, found {w_min} > {w_max}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"objective.ema_decay must be in [0, 1) or null, found {ema_decay}")
        add_student(denoiser, student, adapter)
        self.denoiser = denoiser
        self.optim = check_optim(optim, ["student"])
        self.grid = denoiser.schedule.ddim_grid(num_ddim_timesteps)
        self.skip = T // num_ddim_timesteps if skip is None else skip
        if self.skip < 1:
            raise ValueError(f"objective.skip must be >= 1, found {self.skip}")
        self.w_min, self.w_max = w_min, w_max
        self.loss, self.huber_c = loss, huber_c
        self.boundary = ConsistencyBoundary(sigma_data, timestep_scaling)
        self.student = student
        self.ema_decay = ema_decay
        self.target_role = student
        if ema_decay is not None:
            self.target_role = f"{student}_ema"
            self._add_ema_adapter()

    # --- the objective ---------------------------------------------------------------------
    def generator_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses:
        x0 = batch.latents
        if x0 is None:
            raise ValueError("objective=cd needs real videos: the data config gives prompts only")
        b, device = x0.shape[0], x0.device
        rows = batch.rows
        t_start = self.grid[rows.draw(lambda n: torch.randint(0, len(self.grid), (n,), generator=generator), b)].to(device)
        t = (t_start - self.skip).clamp(min=0)
        noise = noise_like(x0, generator, rows)
        x_start = self.denoiser.schedule.add_noise(x0, noise, t_start)
        w = (self.w_min + (self.w_max - self.w_min) * rows.draw(lambda n: torch.rand(n, generator=generator), b)).to(device)

        f = self.consistency(x_start, t_start, batch.cond, w, role=self.student)
        with torch.no_grad():
            x_prev = self.solver_step(x_start, t_start, t, batch.cond, batch.uncond, w)
            target = self.consistency(x_prev, t, batch.cond, w, role=self.target_role)
        return Losses({"cd": self.distance(f, target)}, x0=f)

    def consistency(self, x: Tensor, t: Tensor, cond: TextCond, w: Tensor, role: str) -> Tensor:
        """The consistency function f(x, t) = c_skip(t) x + c_out(t) x0_role(x, t, w)."""
        pred = self.denoiser(x, t, cond, role=role, guidance=w)
        c_skip, c_out = self.boundary(t, x)
        return c_skip * x + c_out * pred.x0

    def solver_step(self, x_start: Tensor, t_start: Tensor, t: Tensor, cond: TextCond, uncond: TextCond,
                    w: Tensor) -> Tensor:
        """The teacher's guided DDIM (flow: Euler) step from t_start to t, LCM's CFG = Imagen 1 + w."""
        pred = self.denoiser.cfg(x_start, t_start, cond, uncond, 1.0 + w, role="teacher")
        return self.denoiser.schedule.ddim_step(pred.x0, pred.eps, t)

    def distance(self, f: Tensor, target: Tensor) -> Tensor:
        if self.loss == "huber":
            return torch.mean(torch.sqrt((f.float() - target.float()) ** 2 + self.huber_c ** 2) - self.huber_c)
        return F.mse_loss(f.float(), target.float())

    def sampler(self, steps: int, guidance: float | None = None) -> Sampler:
        """LCM multistep sampling on this objective's grid (4 of 50 steps: 999, 759, 519, 279); the w
        is kept only for a student with a guidance embedding (without one it reads none)."""
        has_w = self.student in self.denoiser.guidance_embeddings
        return Sampler("consistency", steps=steps, grid_steps=len(self.grid), guidance=guidance if has_w else None,
                       boundary=self.boundary)

    # --- EMA target --------------------------------------------------------------------------
    def _add_ema_adapter(self) -> None:
        cfg = self.denoiser.backbone.peft_config[self.student]
        self.denoiser.add_adapter(self.target_role, rank=cfg.r, alpha=cfg.lora_alpha,
                                  target_modules=sorted(cfg.target_modules),
                                  guidance_embedding=self.student in self.denoiser.guidance_embeddings)
        for p in self.denoiser.adapter_parameters(self.target_role):
            p.requires_grad_(False)
        self._ema_update(0.0)  # start as a copy of the student

    def _ema_update(self, decay: float) -> None:
        ema_(self.denoiser.adapter_parameters(self.target_role), self.denoiser.adapter_parameters(self.student), decay)

    def after_step(self, group: str) -> None:
        if self.ema_decay is not None and group == "student":
            self._ema_update(self.ema_decay)
