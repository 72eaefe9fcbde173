"""The reward-model protocol, input checks and differentiable image preprocessing (Pillow's
8-bit resize, which ``preprocess_images(match_pil=True)`` reproduces, is in rewards/pil_resize.py).

Every reward model scores a batch of videos against their prompts:

    video:   B,F,3,H,W float tensor with values in [0, 1] (any float dtype, any device)
    prompts: list of B strings
    ->       B float32 scores, differentiable w.r.t. ``video``

Image-text rewards (CLIP, HPS, ...) score each frame and average over frames;
video-text rewards (ViCLIP, InternVideo2) score the clip as a whole. Which
frames a reward sees is decided by ``rewards.mixture``, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from collections.abc import Mapping
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from rewards.pil_resize import pil_resize_levels, round_straight_through, to_uint8_levels  # noqa: F401 (re-exported)

# OpenAI CLIP statistics, also used by the LAION open_clip checkpoints and HPSv2.
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Values this far outside [0, 1] are accepted: decoders and resamplers overshoot a little.
RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TowerSizes:
    """Base of the dual-encoder size configs (ImageReward, ViCLIP, InternVideo2): the image tiles into
    patches and every attention width splits into its heads; ``large(**changes)``: the defaults, changed."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.image_size % self.patch_size:
            raise ValueError(f"{name}: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, what in self.head_splits():
            if width % heads:
                raise ValueError(f"{name}: {what} width {width} is not divisible by {heads} heads")

    def head_splits(self) -> tuple[tuple[int, int, str], ...]:
        """(width, heads, tower) of every attention that splits a width into heads."""
        return ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads, "text"))

    @classmethod
    def large(cls, **changes):
        return replace(cls(), **changes)


class RewardInputError(ValueError):
    """A reward model was given a video or prompts that break its input contract."""


@runtime_checkable
class RewardModel(Protocol):
    """Scores videos against prompts; see the module docstring for the tensor contract."""

    name: str
    kind: Literal["image", "video"]

    def __call__(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1]; prompts: B strings -> B float32 scores."""
        ...


class FrozenReward(nn.Module):
    """What every reward model shares: a fixed function (always in eval mode, so dropout or norm
    statistics never switch on) and a per-prompt cache of whatever its text side computes, which
    is dropped when ``.to()`` / ``.half()`` / ``.cuda()`` moves the module."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._prompt_cache: dict[str, object] = {}

    def train(self, mode: bool = True) -> "FrozenReward":
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):
        self._prompt_cache.clear()  # cached tensors would be on the old device or dtype
        return super()._apply(fn, recurse)

    def cached_text_features(self, prompts: Sequence[str], encode: Callable[[list[str]], Tensor]) -> Tensor:
        """B prompts -> B,D float32 L2-normalised features of ``encode`` (no grad, cached per prompt).
        stack() copies, so features cached under inference_mode can still join an autograd graph."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if missing:
            with torch.no_grad():
                self._prompt_cache.update(zip(missing, F.normalize(encode(missing).float(), dim=-1)))
        return torch.stack([self._prompt_cache[p] for p in prompts])


Tokenizer = Callable[[list[str]], Any]  # N strings -> a Tensor or a mapping of Tensors


class DualEncoderReward(FrozenReward):
    """A frozen image- or video-text dual encoder (CLIP, HPSv2, PickScore, ViCLIP, InternVideo2):
    ``model.encode_text`` over ``tokenizer``'s tokens is its text side, and its pixels are
    ``image_size`` squares normalised by ``mean`` / ``std`` after an ``interpolation`` resize.
    The model is frozen in place (wrap a copy to keep training the original)."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], interpolation: Literal["bicubic", "bilinear"], name: str) -> None:
        super().__init__(name)
        check_interpolation(interpolation, who=f"reward '{name}'")  # at construction, not at the first score
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.train(False)

    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """B prompts -> B,D float32 L2-normalised text features (no grad, cached)."""
        device = next(self.model.parameters()).device

        def encode(ps: list[str]) -> Tensor:
            tokens = self.tokenizer(ps)
            if isinstance(tokens, Mapping):  # BERT-style tokenizers: input_ids and attention_mask
                return self.model.encode_text({k: v.to(device) for k, v in tokens.items()})
            if not isinstance(tokens, Tensor):
                raise TypeError(f"reward '{self.name}': tokenizer output must be a Tensor or a mapping of Tensors, "
                                f"found {type(tokens).__name__}")
            return self.model.encode_text(tokens.to(device))

        return self.cached_text_features(prompts, encode)


def check_video(video: Tensor, prompts: Sequence[str], *, min_frames: int = 1, who: str) -> None:
    """Raise :class:`RewardInputError` unless ``video``/``prompts`` meet the reward contract.

    ``who`` names the caller in the message, e.g. ``"reward 'clip'"``. Checked: a
    floating 5-D tensor shaped B,F,3,H,W with at least ``min_frames`` frames, values in
    [0, 1] (tolerance ``RANGE_TOLERANCE``), and exactly B prompt strings.
    """
    if not isinstance(video, Tensor):
        raise RewardInputError(f"{who}: expected video as a torch.Tensor B,F,3,H,W, found {type(video).__name__}")
    if video.ndim != 5 or video.shape[2] != 3:
        hint = " (a batch of images? add a frame axis: video.unsqueeze(1))" if video.ndim == 4 else ""
        raise RewardInputError(
            f"{who}: expected a 5-D video tensor B,F,3,H,W, found shape {tuple(video.shape)}{hint}"
        )
    if not video.is_floating_point():
        raise RewardInputError(
            f"{who}: expected a floating-point video in [0, 1], found dtype {video.dtype} "
            "(convert with video.float() / 255)"
        )
    if not isinstance(prompts, (list, tuple)):
        raise RewardInputError(f"{who}: expected prompts as a list of strings, found {type(prompts).__name__}")
    if not all(isinstance(p, str) for p in prompts):
        bad = next(p for p in prompts if not isinstance(p, str))
        raise RewardInputError(f"{who}: expected prompts as a list of strings, found an item of type {type(bad).__name__}")
    if len(prompts) == 0:
        raise RewardInputError(f"{who}: expected one prompt per video, found an empty prompt list")
    batch, frames = video.shape[:2]
    if len(prompts) != batch:
        raise RewardInputError(f"{who}: expected {batch} prompts (one per video, B={batch}), found {len(prompts)}")
    if frames < min_frames:
        raise RewardInputError(f"{who}: expected at least {min_frames} frames per video, found {frames}")
    if video.numel() == 0:
        raise RewardInputError(f"{who}: expected a non-empty video, found shape {tuple(video.shape)}")
    lo, hi = (float(v) for v in torch.aminmax(video.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RewardInputError(f"{who}: expected finite pixel values in [0, 1], found NaN or inf")
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = " — this looks like 0..255 pixels: divide by 255" if hi > 1.5 else ""
        raise RewardInputError(
            f"{who}: expected pixel values in [0, 1], found min {lo:.4g} max {hi:.4g}{hint}"
        )


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The H, W after resizing the shorter side to ``size``, rounded as torchvision does (truncation)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def image_batch(images: Tensor, interpolation: str, *, who: str) -> Tensor:
    """The preprocessors' input check: N,3,H,W and a known interpolation -> the images as float32.

    float32 always: antialiased interpolation has no half-precision CPU kernel, and resampling in
    low precision costs accuracy for no speed at these sizes."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: expected images N,3,H,W, found shape {tuple(images.shape)}")
    check_interpolation(interpolation, who=who)
    return images.float()


def check_interpolation(interpolation: str, *, who: str) -> None:
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"{who}: interpolation must be 'bicubic' or 'bilinear', found {interpolation!r}")


def preprocess_images(
    images: Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    *,
    match_pil: bool = False,
    crop: int | None = None,
    crop_anchor: Literal["round", "floor"] = "round",
) -> Tensor:
    """Differentiable CLIP preprocessing: resize shorter side, center-crop, normalise.

    images: N,3,H,W float in [0, 1] (any float dtype) -> N,3,size,size float32,
    normalised as (x - mean) / std. Equals torchvision.transforms.v2
    ``Resize(size, interpolation, antialias=True) + CenterCrop(size) + Normalize(mean, std)``
    on float tensors, and approximates open_clip's PIL pipeline on uint8 images to about
    one uint8 level on smooth images (measured in tests/rewards/test_base.py).

    match_pil: reproduce the official PIL pipeline on the uint8 image ``round(255 * images)``
    (``Image.resize`` bicubic/bilinear, ``CenterCrop``, ``ToTensor``, ``Normalize``): the forward
    pass is bit-exact with it (see :func:`pil_resize_levels`). Backward: straight-through for
    the uint8 roundings (of the input and after each pass), the gradient of Pillow's linear
    resampling otherwise; pixels Pillow clipped to 0 or 255 pass no gradient. Off by default
    (torchvision parity).

    crop: the centre-crop size when it differs from the resize (``CLIPImageProcessor``'s
    shortest_edge / crop_size; default ``size``); crop_anchor: torchvision rounds the offset,
    transformers floors it (``(new - crop) // 2``).
    """
    x = image_batch(images, interpolation, who="preprocess_images")
    height, width = x.shape[-2:]
    new_h, new_w = resized_shape(height, width, size)
    if match_pil:
        x = pil_resize_levels(to_uint8_levels(x), new_h, new_w, interpolation) / 255  # as ToTensor
    elif (new_h, new_w) != (height, width):  # same skip as torchvision (bicubic at scale 1 is exact anyway)
        x = F.interpolate(x, size=(new_h, new_w), mode=interpolation, align_corners=False, antialias=True)
    crop = size if crop is None else crop
    if crop_anchor == "round":  # torchvision's center-crop anchor
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    else:  # transformers'
        top, left = (new_h - crop) // 2, (new_w - crop) // 2
    x = x[..., top : top + crop, left : left + crop]
    return TF.normalize(x, list(mean), list(std))
