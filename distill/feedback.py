"""Reward feedback (T2V-Turbo): score the student's single-step prediction, never a sampling chain.

Only the pixel frames the reward terms will look at are decoded (``VideoVAE.decode_frames``,
checkpointed), so feedback costs a partial decode and the reward models' forward/backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.mixture import MixedReward, MixtureOutput
from turbo.vae import VideoVAE


class RewardFeedback:
    def __init__(self, mixture: MixedReward, vae: VideoVAE):
        self.mixture = mixture
        self.vae = vae

    def __bool__(self) -> bool:
        return len(self.mixture) > 0

    def __call__(self, x0: Tensor, prompts: list[str], generator: torch.Generator) -> MixtureOutput:
        """x0: B,C,f,h,w latents (differentiable) -> the mixture's loss ``-sum(weight * score)``
        with its per-term parts."""
        total_frames = self.vae.pixel_frames(x0.shape[2])
        plan = self.mixture.plan(total_frames, generator)
        frame_ids = self.mixture.needed(plan)
        frames = self.vae.decode_frames(x0, frame_ids)
        return self.mixture(frames, frame_ids, plan, prompts)
