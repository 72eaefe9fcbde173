"""A weighted mixture of reward models, each scoring its own choice of frames.

T2V-Turbo: image-text rewards score M random frames of the student's x0, video-text
rewards score n frames at a fixed stride from a random start. Decoding frames through
the VAE is the expensive part, so the caller first asks for a ``plan`` (which frames
each term scores), decodes only ``needed(plan)``, then calls ``forward``:

    loss = -sum_i w_i * mean_B(score_i)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rewards.base import RewardInputError, RewardModel


@dataclass
class RewardTerm:
    """One reward in the mixture.

    num_frames: M random distinct frames for an image model, n strided frames for a
    video model. stride: video models only; None means max(1, total_frames // num_frames).
    """

    name: str
    model: RewardModel  # also an nn.Module, so it moves with the mixture
    weight: float
    num_frames: int
    stride: int | None = None


@dataclass
class MixtureOutput:
    """loss: scalar float32; terms: name -> weighted scalar loss (-w * mean score);
    scores: name -> detached B float32 scores."""

    loss: Tensor
    terms: dict[str, Tensor]
    scores: dict[str, Tensor]


class MixedReward(nn.Module):
    """Sum of weighted reward terms; an empty mixture means "no reward feedback"."""

    def __init__(self, terms: list[RewardTerm]) -> None:
        super().__init__()
        names = [t.name for t in terms]
        for term in terms:
            where = f"reward term {term.name!r}"
            if not isinstance(term.name, str) or not term.name or "." in term.name:
                raise ValueError(f"{where}: name must be a non-empty string without '.'")
            if names.count(term.name) > 1:
                raise ValueError(f"{where}: names must be unique, found {names}")
            if not isinstance(term.model, nn.Module):
                raise TypeError(f"{where}: model must be an nn.Module, found {type(term.model).__name__}")
            if getattr(term.model, "kind", None) not in ("image", "video"):
                raise ValueError(f"{where}: model.kind must be 'image' or 'video', found {getattr(term.model, 'kind', None)!r}")
            if not math.isfinite(term.weight):
                raise ValueError(f"{where}: weight must be finite, found {term.weight}")
            if term.num_frames < 1:
                raise ValueError(f"{where}: num_frames must be >= 1, found {term.num_frames}")
            if term.stride is not None and (term.model.kind == "image" or term.stride < 1):
                raise ValueError(f"{where}: stride must be None for image models and >= 1 for video models, found {term.stride}")
        self.terms = list(terms)
        self.models = nn.ModuleDict({t.name: t.model for t in terms})

    def __len__(self) -> int:
        return len(self.terms)

    def plan(self, total_frames: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Per term, the sorted int64 (CPU) indices into [0, total_frames) that it will score."""
        plan: dict[str, Tensor] = {}
        for term in self.terms:
            n = term.num_frames
            if term.model.kind == "image":
                if n > total_frames:
                    raise RewardInputError(
                        f"reward term {term.name!r}: needs {n} distinct frames, the video has {total_frames}"
                    )
                plan[term.name] = torch.randperm(total_frames, generator=generator)[:n].sort().values
            else:
                stride = term.stride or max(1, total_frames // n)
                span = (n - 1) * stride + 1  # frames covered from first to last index
                if span > total_frames:
                    raise RewardInputError(
                        f"reward term {term.name!r}: needs {n} frames at stride {stride} "
                        f"(a span of {span} frames), the video has {total_frames}"
                    )
                start = torch.randint(0, total_frames - span + 1, (1,), generator=generator)
                plan[term.name] = start + stride * torch.arange(n)
        return plan

    @staticmethod
    def needed(plan: dict[str, Tensor]) -> Tensor:
        """Sorted unique union of all planned frame indices (int64, CPU): the frames to decode."""
        if not plan:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([idx.cpu() for idx in plan.values()]).unique(sorted=True)

    def forward(self, frames: Tensor, frame_ids: Tensor, plan: dict[str, Tensor], prompts: list[str]) -> MixtureOutput:
        """Score the decoded frames.

        frames: B,K,3,H,W float in [0, 1], the decoded frames ``frame_ids`` (K sorted int64
        indices, usually ``needed(plan)``); prompts: B strings.
        """
        frame_ids = frame_ids.cpu()
        if frames.ndim != 5 or frames.shape[1] != len(frame_ids):
            raise RewardInputError(
                f"reward mixture: expected frames B,K,3,H,W with K={len(frame_ids)} (one per frame id), "
                f"found shape {tuple(frames.shape)}"
            )
        loss = torch.zeros((), dtype=torch.float32, device=frames.device)
        terms: dict[str, Tensor] = {}
        scores: dict[str, Tensor] = {}
        for term in self.terms:
            if term.name not in plan:
                raise RewardInputError(f"reward term {term.name!r}: missing from the plan (has {list(plan)})")
            wanted = plan[term.name].cpu()
            pos = torch.searchsorted(frame_ids, wanted).clamp(max=max(len(frame_ids) - 1, 0))
            if len(frame_ids) == 0 or not torch.equal(frame_ids[pos], wanted):
                raise RewardInputError(
                    f"reward term {term.name!r}: needs frames {wanted.tolist()}, decoded are {frame_ids.tolist()}"
                )
            score = term.model(frames[:, pos.to(frames.device)], prompts).float()
            if score.shape != (frames.shape[0],):
                raise RewardInputError(
                    f"reward term {term.name!r}: expected {frames.shape[0]} scores, found shape {tuple(score.shape)}"
                )
            terms[term.name] = -term.weight * score.mean()
            scores[term.name] = score.detach()
            loss = loss + terms[term.name]
        return MixtureOutput(loss=loss, terms=terms, scores=scores)


def build_mixture(**terms: Mapping) -> MixedReward:
    """Hydra factory: ``build_mixture(clip={"model": m, "weight": 1.0, "frames": 2, "stride": None}, ...)``.

    Each keyword is a term name; its mapping has keys model, weight, frames and optional
    stride (unknown keys are an error). No keywords -> an empty mixture.
    """
    built = []
    for name, spec in terms.items():
        keys = set(spec.keys())
        if not {"model", "weight", "frames"} <= keys <= {"model", "weight", "frames", "stride"}:
            raise ValueError(
                f"reward.{name}: expected keys model, weight, frames[, stride], found {sorted(keys)}"
            )
        stride = spec.get("stride")
        built.append(
            RewardTerm(
                name=name,
                model=spec["model"],
                weight=float(spec["weight"]),
                num_frames=int(spec["frames"]),
                stride=None if stride is None else int(stride),
            )
        )
    return MixedReward(built)
