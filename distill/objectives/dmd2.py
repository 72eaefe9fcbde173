"""DMD2: distribution matching distillation with a two time-scale critic (Yin et al. 2024).

Generator (student) step, for x = the student's x0 from noise (or from its own backward-simulated
input at a listed timestep, for multi-step students):

    t ~ U[min_step_percent T, max_step_percent T),  x_t = add_noise(x, eps, t)
    x0_real = teacher with CFG (Imagen form, ``guidance_scale``),  x0_fake = critic (no CFG)
    p_real = x - x0_real,  p_fake = x - x0_fake
    g = (p_real - p_fake) / mean_{C,F,H,W} |p_real|          (per sample, then nan_to_num)
    loss_dm = 0.5 * mse(x, stopgrad(x - g))                   so d loss / dx = g / x.numel()

Critic step: the ordinary denoising loss of the schedule (``denoising_loss``) on detached
student samples, t ~ U[0, T), no CFG. The critic steps every iteration, the generator every
``dfake_gen_update_ratio`` iterations, each with its own optimizer (``objective.optim``).

Optional GAN term: a small head on features of the critic's network (a forward hook on a middle
block, so it works for Wan and UNet3D alike); real and fake both noised;
D loss ``softplus(D(fake)) + softplus(-D(real))``, G loss ``softplus(-D(fake))``.

The critic is a LoRA adapter on the same frozen base as the teacher and the student.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.objectives.base import Batch, Losses, Objective, add_student, check_optim, denoising_loss, noise_like
from turbo.denoiser import Denoiser, Pred
from turbo.sampling import Sampler, backward_simulation


def dm_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """DMD's normalised distribution-matching direction, in float64 as the reference does (give it
    float64 x0s, see ``x0_float64``); returned in x's dtype."""
    p_real = x.double() - x0_real.double()
    p_fake = x.double() - x0_fake.double()
    norm = p_real.abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return torch.nan_to_num((p_real - p_fake) / norm).to(x.dtype)


def x0_float64(schedule, pred: Pred, x_t: Tensor, t: Tensor) -> Tensor:
    """x0 from a prediction's raw output with the conversion itself in float64 (DMD2's
    ``get_x0_from_noise`` on ``.double()`` inputs): near t = T the 1 / alpha of an eps-prediction
    model amplifies float32 rounding, and the two scores' x0s are subtracted right after."""
    return schedule.to_x0(pred.out.double(), x_t.double(), t)


def dm_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 * mse(x, stopgrad(x - grad)): a loss whose gradient w.r.t. x is grad / x.numel()."""
    return 0.5 * F.mse_loss(x.float(), (x - grad).detach().float())


def gan_generator_loss(logits_fake: Tensor) -> Tensor:
    return F.softplus(-logits_fake).mean()


def gan_critic_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


class GANHead(nn.Module):
    """Pools a hooked feature map to B,C and classifies real vs fake: one logit per sample.
    Accepts transformer tokens B,L,D and UNet feature maps (B*F),C,h,w alike."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, 1))

    def forward(self, features: Tensor, batch: int) -> Tensor:
        if features.ndim == 3:  # B, L, D tokens
            pooled = features.mean(1)
        else:  # (B*F), C, *spatial
            pooled = features.flatten(2).mean(-1).view(batch, -1, features.shape[1]).mean(1)
        return self.net(pooled.float()).squeeze(-1)


def middle_module(denoiser: Denoiser) -> str:
    """Default GAN feature layer: the middle transformer block (Wan) or the mid block (UNet3D)."""
    return denoiser.spec.middle_module(denoiser.backbone)


def _out_channels(module: nn.Module) -> int:
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]
    last = layers[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


class DMD2(Objective):  # the critic and GAN head serve training only: nothing to export
    name = "dmd2"

    def __init__(self, denoiser: Denoiser, guidance_scale: float = 4.5, min_step_percent: float = 0.02,
                 max_step_percent: float = 0.98, dfake_gen_update_ratio: int = 5,
                 denoising_timesteps: list[int] = (999,), backward_simulation: bool = True,
                 critic: dict | None = None, gan: dict | None = None, optim: dict | None = None,
                 student: str = "student", adapter: dict | None = None):
        T = denoiser.schedule.num_train_timesteps
        add_student(denoiser, student, adapter)
        self.denoiser = denoiser
        self.student = student
        self.guidance_scale = guidance_scale
        if not 0.0 <= min_step_percent < max_step_percent <= 1.0:
            raise ValueError(f"objective.min_step_percent / max_step_percent must satisfy 0 <= min < max <= 1, "
                             f"found {min_step_percent} / {max_step_percent}")
        # the reference draws randint(min_step, max_step + 1): the closed range {int(0.02 T) .. int(0.98 T)}
        self.t_lo, self.t_hi = int(min_step_percent * T), min(T, max(int(max_step_percent * T), int(min_step_percent * T)) + 1)
        if dfake_gen_update_ratio < 1:
            raise ValueError(f"objective.dfake_gen_update_ratio must be >= 1, found {dfake_gen_update_ratio}")
        self.ratio = int(dfake_gen_update_ratio)
        self.timesteps = [int(t) for t in denoising_timesteps]
        if not self.timesteps or any(not 0 <= t < T for t in self.timesteps) \
                or any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError(f"objective.denoising_timesteps must be a non-empty, strictly decreasing list of "
                             f"timesteps in 0..{T - 1}, found {list(denoising_timesteps)}")
        self.backward_simulation = backward_simulation

        critic = dict(critic or {})
        student_cfg = denoiser.backbone.peft_config[student]
        denoiser.add_adapter("critic", rank=critic.pop("rank", student_cfg.r), alpha=critic.pop("alpha", student_cfg.lora_alpha),
                             target_modules=sorted(student_cfg.target_modules))
        if critic:
            raise ValueError(f"objective.critic accepts rank and alpha, found unknown keys {sorted(critic)}")

        gan = dict(gan or {})
        self.gan = bool(gan.pop("enabled", False))
        self.gan_gen_weight = float(gan.pop("gen_weight", 3e-3))
        self.gan_critic_weight = float(gan.pop("critic_weight", 1e-2))
        feature_module = gan.pop("feature_module", None) or middle_module(denoiser)
        if gan:
            raise ValueError(f"objective.gan accepts enabled, gen_weight, critic_weight, feature_module; "
                             f"found unknown keys {sorted(gan)}")
        self.head: GANHead | None = None
        self._features: list[Tensor] = []
        if self.gan:
            try:
                module = denoiser.backbone.get_submodule(feature_module)
            except AttributeError as e:
                raise ValueError(f"objective.gan.feature_module={feature_module!r} is not a module of "
                                 f"{type(denoiser.backbone).__name__}") from e
            module.register_forward_hook(self._capture_hook)
            device = next(denoiser.backbone.parameters()).device
            self.head = GANHead(_out_channels(module)).to(device)
        self._capturing = False
        self.needs_videos = self.gan or (len(self.timesteps) > 1 and not backward_simulation)
        self.optim = check_optim(optim, ["student", "critic"])

    # --- schedule and parameters ---------------------------------------------------------------
    def updates(self, step: int) -> list[str]:
        """Two time-scale rule: the generator every ``dfake_gen_update_ratio`` steps, the critic always
        (after the generator, on fresh samples)."""
        return ["student", "critic"] if step % self.ratio == 0 else ["critic"]

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        critic = self.denoiser.adapter_parameters("critic")
        if self.head is not None:
            critic = critic + list(self.head.parameters())
        return {**super().trainable(), "critic": critic}

    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.head is None else {f"gan_head.{k}": v for k, v in self.head.state_dict().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if self.head is not None:
            self.head.load_state_dict({k.removeprefix("gan_head."): v for k, v in state.items()})

    # --- the generator's sample ------------------------------------------------------------------
    def generate(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, int]:
        """The student's x0 at a listed timestep t_k (k random when there are several): the input at
        t_k is the student's own backward-simulated chain (or noised real latents without it).
        Differentiable w.r.t. the student when grad is enabled."""
        device = batch.cond.embeds.device
        noise = batch.rows.draw(lambda n: torch.randn((n, *batch.latent_shape), generator=generator), len(batch)).to(device)
        k = int(torch.randint(0, len(self.timesteps), (1,), generator=generator))
        t_k = self.timesteps[k]
        if self.backward_simulation:
            x_k = backward_simulation(self.denoiser, batch.cond, noise, self.timesteps, k, generator, role=self.student,
                                      rows=batch.rows)
        elif k == 0:
            x_k = noise
        else:
            x_k = self.denoiser.schedule.add_noise(batch.latents, noise, t_k)
        return self.denoiser(x_k, t_k, batch.cond, role=self.student).x0, t_k

    # --- scores ----------------------------------------------------------------------------------
    def real_score(self, x_t: Tensor, t: Tensor, batch: Batch) -> Pred:
        """The teacher with CFG: DMD's real score."""
        return self.denoiser.cfg(x_t, t, batch.cond, batch.uncond, self.guidance_scale, role="teacher")

    def fake_score(self, x_t: Tensor, t: Tensor, batch: Batch) -> Pred:
        return self.denoiser(x_t, t, batch.cond, role="critic")

    # --- losses ----------------------------------------------------------------------------------
    def generator_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses:
        x, _ = self.generate(batch, generator)
        schedule = self.denoiser.schedule
        t = batch.rows.draw(lambda n: schedule.sample_t(n, self.t_lo, self.t_hi, generator=generator, device=x.device),
                            len(batch))
        x_t = schedule.add_noise(x, noise_like(x, generator, batch.rows), t)
        with torch.no_grad():
            grad = dm_gradient(x, x0_float64(schedule, self.real_score(x_t, t, batch), x_t, t),
                               x0_float64(schedule, self.fake_score(x_t, t, batch), x_t, t))
        terms = {"dm": dm_loss(x, grad)}
        if self.gan:
            logits = self.discriminate(x, batch, generator)
            terms["gan/generator"] = self.gan_gen_weight * gan_generator_loss(logits)
        return Losses(terms, x0=x)

    def critic_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses:
        with torch.no_grad():
            x, _ = self.generate(batch, generator)
        terms = {"critic/denoise": denoising_loss(self.denoiser, x, batch.cond, "critic", generator, rows=batch.rows)}
        if self.gan:
            logits_fake = self.discriminate(x, batch, generator)
            logits_real = self.discriminate(batch.latents, batch, generator)
            terms["gan/critic"] = self.gan_critic_weight * gan_critic_loss(logits_real, logits_fake)
        return Losses(terms)

    def discriminate(self, x: Tensor, batch: Batch, generator: torch.Generator) -> Tensor:
        """GAN logits of x noised at t ~ U[0, T), from the critic's hooked features."""
        schedule = self.denoiser.schedule
        t = batch.rows.draw(lambda n: schedule.sample_t(n, 0, None, generator=generator, device=x.device), len(x))
        x_t = schedule.add_noise(x, noise_like(x, generator, batch.rows), t)
        with self._capture():
            self.denoiser(x_t, t, batch.cond, role="critic")
        return self.head(self._features.pop(), x.shape[0])

    @contextmanager
    def _capture(self) -> Iterator[None]:
        self._capturing, self._features = True, []
        try:
            yield
        finally:
            self._capturing = False

    def _capture_hook(self, module: nn.Module, args, output) -> None:
        if self._capturing:
            self._features.append(output[0] if isinstance(output, tuple) else output)

    # --- sampling --------------------------------------------------------------------------------
    def sampler(self, steps: int, guidance: float | None = None) -> Sampler:
        """The fixed-timestep sampler on the trained list (another step count takes evenly spread
        timesteps). ``guidance`` is unused: DMD2 students take no w input."""
        return Sampler("fixed", timesteps=tuple(self.timesteps)).with_steps(
            steps, num_train_timesteps=self.denoiser.schedule.num_train_timesteps)
