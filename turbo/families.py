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


FAMILIES: dict[str, Family] = {
    "wan": Family("wan", "transformer", "WanTransformer3DModel", "transformer", _call_wan,
                  lambda b: f"blocks.{len(b.blocks) // 2}"),
    "unet3d": Family("unet3d", "unet", "UNet3DConditionModel", "unet", _call_unet3d, lambda b: "mid_block"),
}


def get_family(name: str, key: str = "model.family") -> Family:
    if name not in FAMILIES:
        raise ValueError(f"{key} must be one of {sorted(FAMILIES)}, found {name!r}")
    return FAMILIES[name]
