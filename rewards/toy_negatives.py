"""The toy rewards' negatives (rewards/toy_train.py's ``robust`` recipe): videos that must score
below every caption, so that a reward trained with them ranks generated videos and a small pixel
pattern does not buy a high score. ``simple_negatives``: noise, blank, blur and partially erased
clips; ``AttackPool``: a persistent pool of adversarial videos pushed up the current model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rewards.toy import ToyDualEncoder
from turbo.toy.world import BACKGROUND


def _background(n: int, frames: int, size: int, generator: torch.Generator) -> Tensor:
    jitter = 1 + 0.5 * (torch.rand(n, 1, 1, 1, 1, generator=generator) - 0.5)
    return (torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1) * jitter).expand(n, frames, 3, size, size).clone()


def _blur(video: Tensor, sigma: float) -> Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    k = 2 * math.ceil(3 * sigma) + 1
    b, f = video.shape[:2]
    return gaussian_blur(video.flatten(0, 1), [k, k], [sigma, sigma]).unflatten(0, (b, f))


def simple_negatives(real: Tensor, generator: torch.Generator, partial: bool) -> Tensor:
    """One negative per real clip (B,F,3,S,S in [0, 1]): noise, blank, strong blur or (video model)
    the clip with its object erased from a random run of frames, picked at random per clip."""
    b, f, _, s, _ = real.shape
    kinds = torch.randint(4 if partial else 3, (b,), generator=generator)
    out = torch.empty_like(real)
    bg = _background(b, f, s, generator)
    for i, kind in enumerate(kinds.tolist()):
        if kind == 0:  # noise: uniform, or Gaussian around the background
            if torch.rand((), generator=generator) < 0.5:
                out[i] = torch.rand(real[i].shape, generator=generator)
            else:
                scale = 0.3 * float(torch.rand((), generator=generator))
                out[i] = (bg[i] + scale * torch.randn(real[i].shape, generator=generator)).clamp(0, 1)
        elif kind == 1:
            out[i] = bg[i]
        elif kind == 2:
            out[i] = _blur(real[i : i + 1], 2 + 2 * float(torch.rand((), generator=generator)))[0]
        else:  # partial: erase the object (every non-background pixel) from a run of frames
            start = int(torch.randint(f, (), generator=generator))
            length = int(torch.randint(1, f - f // 3 + 1, (), generator=generator))
            clip = real[i].clone()
            gone = slice(start, min(f, start + length))
            clip[gone] = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
            out[i] = clip
    return out


class AttackPool:
    """Videos being pushed up the current model's score for their target captions (module doc)."""

    def __init__(self, size: int, frames: int, image_size: int, captions: Sequence[str], generator: torch.Generator,
                 step_size: float, age: int) -> None:
        self.captions, self.generator, self.step_size, self.max_age = list(captions), generator, step_size, age
        self.frames, self.image_size = frames, image_size
        self.videos = torch.empty(size, frames, 3, image_size, image_size)
        self.targets: list[str] = [""] * size
        self.age = torch.zeros(size, dtype=torch.long)
        for i in range(size):
            self._restart(i)
        self.cursor = 0

    def _restart(self, i: int) -> None:
        if torch.rand((), generator=self.generator) < 0.5:
            self.videos[i] = _background(1, self.frames, self.image_size, self.generator)[0]
        else:
            self.videos[i] = torch.rand(self.videos[i].shape, generator=self.generator)
        self.targets[i] = self.captions[int(torch.randint(len(self.captions), (), generator=self.generator))]
        self.age[i] = 0

    def refine(self, model: ToyDualEncoder, count: int, steps: int) -> tuple[Tensor, list[str]]:
        """The next ``count`` pool videos after ``steps`` more ascent steps on cos(visual, target)."""
        idx = [(self.cursor + j) % len(self.targets) for j in range(count)]
        self.cursor = (self.cursor + count) % len(self.targets)
        for i in idx:
            if self.age[i] >= self.max_age:
                self._restart(i)
        video = self.videos[idx].clone()
        targets = [self.targets[i] for i in idx]
        with torch.no_grad():
            text = F.normalize(model.encode_text(targets), dim=-1)
        for _ in range(steps):
            video.requires_grad_(True)
            visual = F.normalize(model.encode_visual(video), dim=-1)
            score = (visual * (text[:, None] if visual.ndim == 3 else text)).sum(-1).sum()
            (grad,) = torch.autograd.grad(score, video)
            video = (video.detach() + self.step_size * grad.sign()).clamp(0, 1)
        self.videos[idx] = video
        self.age[idx] += 1
        return video, targets
