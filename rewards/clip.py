"""CLIP image-text reward (T2V-Turbo v2 uses open_clip ViT-H-14 laion2B-s32B-b79K).

score(video, prompt) = mean over frames f of cos(E_img(preprocess(video[f])), E_txt(prompt))

The image side is differentiable end to end (torch preprocessing, no PIL); the
text side is computed without gradients and cached per prompt string.
"""

from __future__ import annotations

import os
from typing import Literal, Sequence

import open_clip
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

from rewards.base import OPENAI_MEAN, OPENAI_STD, DualEncoderReward, Tokenizer, check_video, preprocess_images
from rewards.loading import read_state_dict
from turbo.seeding import seeded


class CLIPReward(DualEncoderReward):
    """Frozen open_clip model scoring each frame against the prompt by cosine similarity.

    forward(video: B,F,3,H,W float in [0, 1], prompts: B strings) -> B float32 scores
    in [-1, 1], differentiable w.r.t. ``video``. Parameters never require grad and
    the model stays in eval mode whatever ``train()`` is called with.
    """

    kind: Literal["image"] = "image"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        interpolation: Literal["bicubic", "bilinear"] = "bicubic",
        match_pil: bool = False,
        name: str = "clip",
    ) -> None:
        super().__init__(model, tokenizer, image_size=image_size, mean=mean, std=std, interpolation=interpolation,
                         name=name)
        self.match_pil = match_pil  # see preprocess_images

    def preprocess(self, images: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,3,S,S float32 normalised pixels (subclasses: their model's transform)."""
        return preprocess_images(images, self.image_size, self.mean, self.std, self.interpolation, match_pil=self.match_pil)

    def image_features(self, images: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,D float32 L2-normalised image features (with grad)."""
        dtype = next(self.model.visual.parameters()).dtype  # fp16/bf16 checkpoints want matching input
        return F.normalize(self.model.encode_image(self.preprocess(images).to(dtype)).float(), dim=-1)

    def forward(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1]; prompts: B strings -> B float32 mean-over-frames cosines."""
        check_video(video, prompts, who=f"reward '{self.name}'")
        batch, frames = video.shape[:2]
        image = self.image_features(video.flatten(0, 1)).view(batch, frames, -1)
        text = self.text_features(prompts)
        return (image * text[:, None, :]).sum(-1).mean(1)


def tiny_clip_model(
    seed: int = 0,
    image_size: int = 32,
    embed_dim: int = 32,
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    patch_size: int = 8,
    context_length: int = 32,
) -> CLIP:
    """A seeded, randomly initialised, trainable open_clip ``CLIP`` for tests and the toy world.

    The global torch RNG is left untouched (the seed is applied inside a forked RNG).
    Vision and text towers share ``width``, ``layers`` and ``heads``; the vocabulary is
    open_clip's BPE (49408 tokens) so :class:`SimpleTokenizer` works with it.
    """
    if width % heads:
        raise ValueError(f"tiny_clip_model: width ({width}) must be divisible by heads ({heads})")
    vision = CLIPVisionCfg(
        layers=layers, width=width, head_width=width // heads, patch_size=patch_size, image_size=image_size
    )
    text = CLIPTextCfg(context_length=context_length, width=width, heads=heads, layers=layers)
    return seeded(seed, lambda: CLIP(embed_dim, vision_cfg=vision, text_cfg=text))


def tiny_clip_reward(
    seed: int = 0,
    image_size: int = 32,
    embed_dim: int = 32,
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    patch_size: int = 8,
    context_length: int = 32,
    checkpoint: str | None = None,
    name: str = "clip",
) -> CLIPReward:
    """A :class:`CLIPReward` over :func:`tiny_clip_model`, optionally loading local weights.

    ``checkpoint``: path to a .safetensors / .pt state dict of a model built with the
    same arguments (e.g. a tiny CLIP trained on the toy world). Fully offline.
    """
    model = tiny_clip_model(seed, image_size, embed_dim, width, layers, heads, patch_size, context_length)
    if checkpoint is not None:
        model.load_state_dict(read_state_dict(checkpoint, key=f"reward.{name}.model.checkpoint", who=f"reward '{name}'"))
    # The BPE vocabulary ships inside the open_clip package: no network access.
    tokenizer = SimpleTokenizer(context_length=context_length)
    return CLIPReward(model, tokenizer, image_size=image_size, name=name)


def open_clip_reward(
    arch: str,
    checkpoint: str,
    name: str = "clip",
    precision: str = "fp32",
) -> CLIPReward:
    """A :class:`CLIPReward` over a real open_clip model, e.g. ``("ViT-H-14", "/ckpts/laion2b.bin")``.

    ``arch`` is a built-in open_clip architecture name; ``checkpoint`` must be a local
    file (pretrained tags would download, so they are refused). Image size, mean, std and
    interpolation come from the model's preprocessing config.
    """
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"reward '{name}': checkpoint {checkpoint!r} not found; open_clip_reward needs a local "
            "checkpoint file path (it never downloads, so pretrained tags are not accepted)"
        )
    if ":" in arch:  # 'hf-hub:...' / 'local-dir:...' would fetch configs or ignore `checkpoint`
        raise ValueError(f"reward '{name}': arch must be a built-in open_clip name such as 'ViT-H-14', found {arch!r}")
    model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=checkpoint, precision=precision)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"reward '{name}': only square image sizes are supported, {arch} uses {tuple(size)}")
        size = size[0]
    if cfg.get("resize_mode", "shortest") != "shortest":
        raise ValueError(
            f"reward '{name}': {arch} preprocesses with resize_mode={cfg['resize_mode']!r}; "
            "only 'shortest' (resize + center crop) is implemented"
        )
    return CLIPReward(
        model,
        open_clip.get_tokenizer(arch),
        image_size=size,
        mean=cfg.get("mean", OPENAI_MEAN),
        std=cfg.get("std", OPENAI_STD),
        interpolation=cfg.get("interpolation", "bicubic"),
        name=name,
    )
