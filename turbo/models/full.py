"""Full-size backbones with random weights, built from a config's ``arch:`` node.

Speed and memory do not depend on what a network learned, so benchmarks (``eval/speed.py``) and
size checks build the real architecture without its weights: on the ``meta`` device (no memory,
for parameter counts) or on a real one (random init, seeded). ``random_cond`` makes conditioning
of the shapes that backbone reads.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import diffusers
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from turbo.families import get_family
from turbo.seeding import seeded
from turbo.text import TextCond


def _plain(arch: Any) -> dict:
    return OmegaConf.to_container(arch, resolve=True) if isinstance(arch, DictConfig) else dict(arch)


def random_backbone(family: str, arch: Mapping[str, Any], device: str | torch.device = "meta",
                    dtype: torch.dtype | None = None, seed: int = 0, key: str = "model.arch") -> nn.Module:
    """The diffusers class of ``family`` built from ``arch`` (its constructor arguments, e.g.
    ``num_layers: 30``) with random weights on ``device``. Unknown arguments are an error."""
    cls = getattr(diffusers, get_family(family).backbone_class)
    arch = _plain(arch)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(arch) - accepted)
    if unknown:
        raise ValueError(f"{key} has keys {unknown} that {cls.__name__} does not take; expected some of {sorted(accepted)}")
    default = torch.get_default_dtype()
    try:
        if dtype is not None and dtype.is_floating_point:
            torch.set_default_dtype(dtype)  # build in the target dtype: no float32 copy of a 14B network
        with torch.device(device):
            model = seeded(seed, lambda: cls(**arch))
    finally:
        torch.set_default_dtype(default)
    return model if dtype is None else model.to(dtype)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latent_channels(model: nn.Module) -> int:
    """Channels of the latent the backbone denoises (its output)."""
    cfg = model.config
    return cfg.out_channels or cfg.in_channels


def image_latent_channels(model: nn.Module) -> int:
    """Channels of the I2V conditioning concatenated to the noisy latent (0 for T2V)."""
    return model.config.in_channels - latent_channels(model)


def random_cond(model: nn.Module, family: str, batch: int, frames_hw: tuple[int, int, int] | None = None,
                text_tokens: int = 77, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                generator: torch.Generator | None = None) -> TextCond:
    """Random conditioning of the shapes ``model`` reads: text tokens B,L,D and a full mask, the
    pooled embedding where the family takes one, I2V channel latents B,C',F,H,W (C' = in - out
    channels; needs the latent ``frames_hw``) and Wan I2V's 257 image tokens."""
    cfg = model.config
    width = {"wan": "text_dim", "hunyuan": "text_embed_dim", "sd3": "joint_attention_dim"}.get(family, "cross_attention_dim")

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    pooled = None
    if family in ("hunyuan", "sd3"):
        pooled = randn(batch, cfg.pooled_projection_dim)
    elif family == "unet2d" and cfg.addition_embed_type == "text_time":
        pooled = randn(batch, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim)
    extra = image_latent_channels(model)
    image_latents = randn(batch, extra, *frames_hw) if extra and frames_hw is not None else None
    image_embeds = randn(batch, 257, cfg.image_dim) if family == "wan" and cfg.image_dim else None
    return TextCond(randn(batch, text_tokens, getattr(cfg, width)),
                    torch.ones(batch, text_tokens, dtype=torch.long, device=device), pooled, image_latents, image_embeds)
