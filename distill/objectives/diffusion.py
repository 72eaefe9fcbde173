"""Plain diffusion training: how teachers are pre-trained (or LoRA-fine-tuned) with the same loop.

    t ~ U[0, T),  x_t = add_noise(x0, eps, t),  loss = mse(raw output, schedule.target(x0, eps, t))

(eps / v for VP schedules, velocity for flow), with each prompt replaced by "" with probability
``cond_dropout`` so that the trained network supports classifier-free guidance.

``ema`` > 0 keeps an exponential moving average of the trained weights (decay ``ema`` per step),
checkpointed with them and exported instead of the raw weights (teachers sample better from it).

``train: base`` trains the backbone's own weights (the teacher role: adapters off). That is how a
toy teacher is made from a seeded random network; the result is exported as a diffusers folder
(``<run>/teacher/transformer`` or ``unet``) that ``turbo.models.load_backbone`` reads, and the
weights travel in checkpoints through ``extra_state``. ``train: student`` fine-tunes the student
LoRA instead (supervised fine-tuning on the data).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from distill.objectives.base import Batch, Losses, Objective, add_student, check_optim, denoising_loss, ema_
from turbo.atomic import atomic_dir
from turbo.denoiser import Denoiser
from turbo.sampling import Rows, Sampler
from turbo.text import TextCond


def drop_prompts(cond: TextCond, uncond: TextCond, p: float, generator: torch.Generator,
                 rows: Rows = Rows()) -> TextCond:
    """Replace each sample's conditioning by the empty prompt's with probability p."""
    if p <= 0:
        return cond
    drop = rows.draw(lambda n: torch.rand(n, generator=generator), len(cond)) < p
    keep = (~drop).to(cond.embeds.device)
    pooled = None if cond.pooled is None else torch.where(keep[:, None], cond.pooled, uncond.pooled)
    # only the text is dropped: I2V image latents / tokens stay (CFG's unconditional half keeps the image)
    return cond.replace(embeds=torch.where(keep[:, None, None], cond.embeds, uncond.embeds),
                        mask=torch.where(keep[:, None], cond.mask, uncond.mask), pooled=pooled)


def clean_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The backbone's own weights without peft's LoRA layers, under the names the plain diffusers
    class uses (peft wraps ``to_q`` as ``to_q.base_layer``)."""
    return {k.replace(".base_layer.", "."): v for k, v in backbone.state_dict().items() if "lora_" not in k}


class Diffusion(Objective):
    name = "diffusion"
    needs_videos = True
    feeds_rewards = False  # plain denoising: no single-step student prediction for a reward to score

    def __init__(self, denoiser: Denoiser, train: str = "base", cond_dropout: float = 0.1,
                 optim: dict | None = None, student: str = "student", ema: float = 0.0, adapter: dict | None = None):
        if train not in ("base", "student"):
            raise ValueError(f"objective.train must be 'base' or 'student', found {train!r}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"objective.cond_dropout must lie in [0, 1), found {cond_dropout}")
        self.denoiser = denoiser
        self.train_base = train == "base"
        self.student = None if self.train_base else student  # train: base adds no adapter (it would go unused)
        if self.student is not None:
            add_student(denoiser, student, adapter)
        self.group = "model" if self.train_base else student
        self.role = "teacher" if self.train_base else student
        self.cond_dropout = cond_dropout
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"objective.ema must lie in [0, 1) (0 = off), found {ema}")
        self.ema_decay = ema
        self.optim = check_optim(optim, [self.group])
        if self.train_base:
            self._params = [p for n, p in denoiser.backbone.named_parameters() if "lora_" not in n]
            for p in self._params:
                p.requires_grad_(True)
        else:
            self._params = denoiser.adapter_parameters(student)
        # An exponential moving average of the trained weights (train: base only): what is exported
        self.ema = [p.detach().clone() for p in self._params] if ema > 0 and self.train_base else None

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        return {self.group: self._params}

    def updates(self, step: int) -> list[str]:
        return [self.group]

    def generator_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses:
        if batch.latents is None:
            raise ValueError("objective=diffusion needs real videos: the data config gives prompts only")
        cond = drop_prompts(batch.cond, batch.uncond, self.cond_dropout, generator, batch.rows)
        return Losses({"diffusion": denoising_loss(self.denoiser, batch.latents, cond, self.role, generator,
                                                   rows=batch.rows)})

    def after_step(self, group: str) -> None:
        if self.ema is not None:
            ema_(self.ema, self._params, self.ema_decay)

    def sampler(self, steps: int, guidance: float | None = None) -> Sampler:
        """A fine-tuned student (``train: student``) samples as its teacher does, with the plain DDIM /
        Euler sampler and no CFG (the loop's teacher samples show CFG)."""
        return Sampler("teacher", steps=steps, guidance_scale=1.0)

    def extra_state(self) -> dict[str, Tensor]:
        if not self.train_base:
            return {}
        state = clean_state_dict(self.denoiser.backbone)
        if self.ema is not None:
            state.update({f"ema.{i}": e for i, e in enumerate(self.ema)})
        return state

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if self.train_base:
            own = self.denoiser.backbone.state_dict()
            with torch.no_grad():
                for k, v in own.items():
                    if "lora_" not in k:
                        v.copy_(state[k.replace(".base_layer.", ".")])
                if self.ema is not None:
                    for i, e in enumerate(self.ema):
                        e.copy_(state[f"ema.{i}"])

    def export(self, folder: Path) -> None:
        """``train: base`` -> ``folder/teacher/<transformer|unet>``: a diffusers folder of the trained
        backbone (without adapters), loadable by ``turbo.models.load_backbone``."""
        if not self.train_base:
            return
        backbone = self.denoiser.backbone
        fresh = type(backbone).from_config(backbone.config)
        fresh.load_state_dict(clean_state_dict(backbone))
        if self.ema is not None:  # export the averaged weights (same order as self._params)
            names = [n.replace(".base_layer.", ".") for n, p in backbone.named_parameters() if "lora_" not in n]
            own = dict(fresh.named_parameters())
            with torch.no_grad():
                for name, e in zip(names, self.ema):
                    own[name].copy_(e)
        with atomic_dir(Path(folder) / "teacher") as tmp:
            fresh.save_pretrained(tmp / self.denoiser.spec.subfolder)
