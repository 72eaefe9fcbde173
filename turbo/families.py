"""Model families: how each diffusers backbone is called, loaded and named.

A family is everything the rest of turbo needs to know about one backbone class: the
sub-folder and class name of a diffusers-format folder (``transformer/WanTransformer3DModel``),
the prefix its LoRA keys carry in a diffusers pipeline (``transformer.`` / ``unet.``), and one
``call`` function that maps our conditioning onto the class's own forward signature. Adding a
family is one entry here, one tiny builder in ``turbo/models/tiny.py`` and one config in
``conf/model/``.

Every family sees latents as B,C,F,H,W (an image is a one-frame video); image backbones
(``video=False``) get B*F,C,H,W and their output is folded back. Conditioning extras that only
some families use (pooled text embeddings, I2V image latents and image tokens) travel in
``TextCond``; a family that needs one and does not find it raises a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from turbo.text import TextCond

Call = Callable[[nn.Module, Tensor, Tensor, TextCond], Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    subfolder: str          # component folder in a diffusers-format model folder
    backbone_class: str     # diffusers class name expected in <subfolder>/config.json
    lora_prefix: str        # key prefix in a diffusers pipeline's LoRA file
    call: Call              # (backbone, x B,C,F,H,W, model timesteps B, cond) -> raw output B,C,F,H,W
    middle_module: Callable[[nn.Module], str]  # a mid-network module name (DMD2's GAN features)
    video: bool = True      # False: an image backbone, called on B*F,C,H,W (frames folded into the batch)


def with_image_latents(x: Tensor, cond: TextCond) -> Tensor:
    """I2V: concatenate the conditioning latents (first-frame latent padded over time + mask
    channels) to the noisy latents on channels; T2V: ``x`` unchanged."""
    if cond.image_latents is None:
        return x
    if cond.image_latents.shape[0] != x.shape[0] or cond.image_latents.shape[2:] != x.shape[2:]:
        raise ValueError(f"image latents {tuple(cond.image_latents.shape)} do not match the noisy latents "
                         f"{tuple(x.shape)} in batch, frames and size")
    return torch.cat([x, cond.image_latents.to(x.dtype)], dim=1)


def _call_wan(backbone: nn.Module, x: Tensor, t: Tensor, cond: TextCond) -> Tensor:
    kwargs = {}
    if cond.image_embeds is not None:
        kwargs["encoder_hidden_states_image"] = cond.image_embeds.to(x.dtype)
    return backbone(hidden_states=with_image_latents(x, cond), timestep=t,
                    encoder_hidden_states=cond.embeds.to(x.dtype), return_dict=False, **kwargs)[0]


def _call_unet3d(backbone: nn.Module, x: Tensor, t: Tensor, cond: TextCond) -> Tensor:
    return backbone(sample=with_image_latents(x, cond), timestep=t, encoder_hidden_states=cond.embeds.to(x.dtype),
                    return_dict=False)[0]


# HunyuanVideo T2V is guidance-distilled: it takes the guidance scale as an input (embedded
# guidance, ``guidance_embeds=True``) instead of running CFG. The teacher is called at diffusers'
# pipeline default; a backbone attribute ``embedded_guidance_scale`` overrides it.
HUNYUAN_EMBEDDED_GUIDANCE = 6.0

# SDXL's micro-conditioning needs the pixel size; the latent is 8x smaller (SDXL's VAE).
SDXL_VAE_SCALE = 8


def require_pooled(cond: TextCond, family: str) -> Tensor:
    if cond.pooled is None:
        raise ValueError(f"model.family={family!r} needs a pooled text embedding (TextCond.pooled, B,P), found None: "
                         f"use this family's text encoder (model.text_encoder), which returns one")
    return cond.pooled


def fold_frames(x: Tensor) -> Tensor:
    """B,C,F,H,W -> B*F,C,H,W (frame-major within each sample), for image backbones."""
    return x.transpose(1, 2).flatten(0, 1)


def unfold_frames(x: Tensor, batch: int) -> Tensor:
    """B*F,C,H,W -> B,C,F,H,W, the inverse of ``fold_frames``."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


def _per_frame(v: Tensor, frames: int) -> Tensor:
    return v.repeat_interleave(frames, dim=0)


def _call_hunyuan(backbone: nn.Module, x: Tensor, t: Tensor, cond: TextCond) -> Tensor:
    pooled = require_pooled(cond, "hunyuan")
    guidance = None
    if backbone.config.guidance_embeds:
        scale = getattr(backbone, "embedded_guidance_scale", HUNYUAN_EMBEDDED_GUIDANCE)
        guidance = torch.full((x.shape[0],), scale * 1000.0, dtype=x.dtype, device=x.device)
    return backbone(hidden_states=with_image_latents(x, cond), timestep=t, encoder_hidden_states=cond.embeds.to(x.dtype),
                    encoder_attention_mask=cond.mask, pooled_projections=pooled.to(x.dtype), guidance=guidance,
                    return_dict=False)[0]


def _call_unet2d(backbone: nn.Module, x: Tensor, t: Tensor, cond: TextCond) -> Tensor:
    """SD 1.5 (text cross-attention only) and SDXL (``addition_embed_type="text_time"``: also the
    pooled text embedding and the size micro-conditioning)."""
    b, f = x.shape[0], x.shape[2]
    kwargs = {}
    if backbone.config.addition_embed_type == "text_time":
        pooled = require_pooled(cond, "unet2d")
        # SDXL's time ids are (original size, crop top-left, target size) in pixels. We assume the
        # original size equals the target size (the latent size times the VAE's 8) and a zero crop,
        # as diffusers' pipeline does by default.
        h, w = x.shape[-2] * SDXL_VAE_SCALE, x.shape[-1] * SDXL_VAE_SCALE
        time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=x.dtype, device=x.device).expand(b * f, 6)
        kwargs["added_cond_kwargs"] = {"text_embeds": _per_frame(pooled.to(x.dtype), f), "time_ids": time_ids}
    out = backbone(sample=fold_frames(with_image_latents(x, cond)), timestep=_per_frame(t, f),
                   encoder_hidden_states=_per_frame(cond.embeds.to(x.dtype), f), return_dict=False, **kwargs)[0]
    return unfold_frames(out, b)


def _call_sd3(backbone: nn.Module, x: Tensor, t: Tensor, cond: TextCond) -> Tensor:
    b, f = x.shape[0], x.shape[2]
    pooled = require_pooled(cond, "sd3")
    out = backbone(hidden_states=fold_frames(with_image_latents(x, cond)), timestep=_per_frame(t, f),
                   encoder_hidden_states=_per_frame(cond.embeds.to(x.dtype), f),
                   pooled_projections=_per_frame(pooled.to(x.dtype), f), return_dict=False)[0]
    return unfold_frames(out, b)


def _middle_hunyuan(backbone: nn.Module) -> str:
    # 20 dual-stream then 40 single-stream blocks: the middle of all 60 is single block 10. Both kinds
    # return (latent tokens, text tokens); the hook keeps the first.
    dual, single = len(backbone.transformer_blocks), len(backbone.single_transformer_blocks)
    mid = (dual + single) // 2
    return f"transformer_blocks.{mid}" if mid < dual else f"single_transformer_blocks.{mid - dual}"


FAMILIES: dict[str, Family] = {
    "wan": Family("wan", "transformer", "WanTransformer3DModel", "transformer", _call_wan,
                  lambda b: f"blocks.{len(b.blocks) // 2}"),
    "unet3d": Family("unet3d", "unet", "UNet3DConditionModel", "unet", _call_unet3d, lambda b: "mid_block"),
    "hunyuan": Family("hunyuan", "transformer", "HunyuanVideoTransformer3DModel", "transformer", _call_hunyuan,
                      _middle_hunyuan),
    "unet2d": Family("unet2d", "unet", "UNet2DConditionModel", "unet", _call_unet2d, lambda b: "mid_block",
                     video=False),
    # SD3's joint blocks return (text tokens, image tokens): hook the image stream's feed-forward instead
    "sd3": Family("sd3", "transformer", "SD3Transformer2DModel", "transformer", _call_sd3,
                  lambda b: f"transformer_blocks.{len(b.transformer_blocks) // 2}.ff", video=False),
}


def get_family(name: str, key: str = "model.family") -> Family:
    if name not in FAMILIES:
        raise ValueError(f"{key} must be one of {sorted(FAMILIES)}, found {name!r}")
    return FAMILIES[name]
