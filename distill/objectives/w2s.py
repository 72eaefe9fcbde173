"""W2S: MagicDistillation's weak-to-strong distribution matching — our reading of the paper.

MagicDistillation (the distillation behind Magic 1-For-1 / Magic141) published no code. What the
paper says, and what we implement:

- DMD with a LoRA critic (the "fake DiT") on the shared frozen base, as in ``dmd2.py``.
- "Weak-to-strong": the real DiT's parameters are shifted toward the fake DiT's by a weak weight of
  the low-rank branch. We read this as

      real score = base + lambda * critic LoRA   (with the same CFG as DMD2's real score)
      fake score = base + critic LoRA

  computed with peft's adapter scales on the one base (no weight copies). lambda = 0 is DMD2
  exactly; lambda = 1 makes real and fake the same network, so with ``guidance_scale`` 1 the
  distribution-matching gradient is zero. lambda (``objective.weak_weight``) is not published:
  small values (we default to 0.25) shift the target only a little toward the critic, which the
  paper credits with more stable training of few-step students.
- It also "minimises the discrepancy between the fake and the ground-truth distribution". We read
  this as extra supervision of the critic on real videos: with ``gt_weight`` > 0 the critic also
  takes the denoising loss on the batch's real latents, so the fake distribution it models is
  pulled toward real data. This term needs a dataset with videos.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.objectives.base import Batch, Losses, denoising_loss
from distill.objectives.dmd2 import DMD2
from turbo.denoiser import Pred


class W2S(DMD2):
    name = "w2s"

    def __init__(self, denoiser, weak_weight: float = 0.25, gt_weight: float = 0.0, **dmd2_kwargs):
        if not 0.0 <= weak_weight <= 1.0:
            raise ValueError(f"objective.weak_weight (lambda) must lie in [0, 1], found {weak_weight}")
        if gt_weight < 0:
            raise ValueError(f"objective.gt_weight must be >= 0, found {gt_weight}")
        super().__init__(denoiser, **dmd2_kwargs)
        self.weak_weight = float(weak_weight)
        self.gt_weight = float(gt_weight)
        self.needs_videos = self.needs_videos or self.gt_weight > 0

    def real_score(self, x_t: Tensor, t: Tensor, batch: Batch) -> Pred:
        return self.denoiser.cfg(x_t, t, batch.cond, batch.uncond, self.guidance_scale,
                                 role={"critic": self.weak_weight})

    def critic_loss(self, batch: Batch, step: int, generator: torch.Generator) -> Losses:
        losses = super().critic_loss(batch, step, generator)
        if self.gt_weight > 0:
            losses.terms["critic/gt"] = self.gt_weight * denoising_loss(
                self.denoiser, batch.latents, batch.cond, "critic", generator, rows=batch.rows)
        return losses
