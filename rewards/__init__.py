"""Reward models behind one protocol (``rewards.base``) and their weighted mixture.

The CLIP and toy names are imported lazily: ``import open_clip`` (and transformers, which the
toy vocabulary imports) costs seconds, and code that only needs the protocol or the mixture
should not pay for it.
"""

from rewards.base import (
    OPENAI_MEAN,
    OPENAI_STD,
    RewardInputError,
    RewardModel,
    check_video,
    preprocess_images,
)
from rewards.mixture import MixedReward, MixtureOutput, RewardTerm, build_mixture

_LAZY = {"CLIPReward", "tiny_clip_model", "tiny_clip_reward", "open_clip_reward"}
_LAZY_TOY = {"ToyImageText", "ToyVideoText", "load_toy_reward", "train_toy_reward"}

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "RewardInputError",
    "RewardModel",
    "check_video",
    "preprocess_images",
    "MixedReward",
    "MixtureOutput",
    "RewardTerm",
    "build_mixture",
    *sorted(_LAZY),
    *sorted(_LAZY_TOY),
]


def __getattr__(name: str):
    if name in _LAZY:
        from rewards import clip

        return getattr(clip, name)
    if name in _LAZY_TOY:
        from rewards import toy

        return getattr(toy, name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
