"""A student folder for use outside turbo: the LoRA under the original checkpoint's key names, and a
merged full backbone.

``turbo-train`` always writes the diffusers LoRA (``pytorch_lora_weights.safetensors``, loadable
with a diffusers pipeline's ``load_lora_weights``) and ``sampler.json``. On request
(``export.original_keys``, ``export.merged``) it also writes

- ``lora_original_keys.safetensors``: the same LoRA under the key names of the model's original
  release, the layout ComfyUI-style loaders read (``diffusion_model.<module>.lora_down.weight``,
  ``.lora_up.weight`` and a scalar ``.alpha``, so that the loader's ``alpha / rank`` scale equals
  peft's). diffusers ships only the reading direction of this map
  (``lora_conversion_utils._convert_non_diffusers_wan_lora_to_diffusers``); the tests round-trip
  our file through it.
- ``merged/<transformer|unet>/``: the base weights with the LoRA folded in (``W + scale * B A``),
  a diffusers folder that ``<BackboneClass>.from_pretrained`` loads with no peft at all. A student
  with a guidance embedding samples at one w (its sampler's): the embedding's output at that w is a
  constant added to the time embedder's input, so it folds exactly into that MLP's first bias.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import Tensor

from turbo.atomic import atomic_dir
from turbo.denoiser import Denoiser

ORIGINAL_KEYS_FILE = "lora_original_keys.safetensors"
MERGED_DIR = "merged"

# Wan2.1's original module names for the diffusers modules inside ``blocks.N`` a LoRA can target.
WAN_BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def lora_layers(denoiser: Denoiser, adapter: str) -> dict[str, LoraLayer]:
    """Module name -> peft LoRA layer carrying ``adapter``."""
    layers = {name: m for name, m in denoiser.backbone.named_modules()
              if isinstance(m, LoraLayer) and adapter in m.lora_A}
    if not layers:
        raise KeyError(f"no LoRA layers of adapter {adapter!r}; adapters: {denoiser.adapters}")
    return layers


def wan_original_name(name: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q`` (Wan2.1's release names)."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in WAN_BLOCK_MODULES:
        return f"blocks.{parts[1]}.{WAN_BLOCK_MODULES[parts[2]]}"
    raise ValueError(f"student.target_modules: {name!r} has no name in Wan2.1's original checkpoints "
                     f"(known inside blocks.N: {', '.join(WAN_BLOCK_MODULES)})")


ORIGINAL_NAMES = {"wan": wan_original_name}


def original_key_lora(denoiser: Denoiser, adapter: str) -> dict[str, Tensor]:
    """The adapter as ``diffusion_model.<original name>.{lora_down.weight, lora_up.weight, alpha}``."""
    rename = ORIGINAL_NAMES.get(denoiser.family)
    if rename is None:
        raise ValueError(f"export.original_keys: no original key map for model.family={denoiser.family} "
                         f"(available: {', '.join(ORIGINAL_NAMES)}); the diffusers LoRA is still written")
    state = {}
    for name, layer in lora_layers(denoiser, adapter).items():
        down, up = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        key = f"diffusion_model.{rename(name)}"
        state[f"{key}.lora_down.weight"] = down.detach().float().contiguous().cpu()
        state[f"{key}.lora_up.weight"] = up.detach().float().contiguous().cpu()
        # loaders scale by alpha / rank: peft's scaling times the rank is the alpha that matches
        state[f"{key}.alpha"] = torch.tensor(float(layer.scaling[adapter]) * down.shape[0])
    return state


def merged_state_dict(denoiser: Denoiser, adapter: str, guidance: float | None = None) -> dict[str, Tensor]:
    """The backbone's weights under its plain diffusers names with ``adapter`` folded in; a guidance
    embedding at ``guidance`` folds into the time embedder's first bias."""
    layers = lora_layers(denoiser, adapter)
    state = {}
    for key, value in denoiser.backbone.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().clone()
    for name, layer in layers.items():
        delta = layer.get_delta_weight(adapter)  # peft's own B @ A * scaling (fan-in/out aware)
        state[f"{name}.weight"] = (state[f"{name}.weight"].float() + delta.float()).to(state[f"{name}.weight"].dtype)
    embedding = denoiser.guidance_embeddings[adapter] if adapter in denoiser.guidance_embeddings else None
    if embedding is not None:
        if guidance is None:
            raise ValueError(f"export.merged: adapter {adapter!r} has a guidance embedding; the merged backbone "
                             f"needs the one w it samples at (the sampler's guidance), found none")
        first = denoiser.time_features_linear()
        shift = embedding(torch.tensor([float(guidance)], device=embedding.linear.weight.device))[0]
        prefix = next(n for n, m in denoiser.backbone.named_modules() if m is first)
        bias = state.get(f"{prefix}.bias")
        if bias is None:
            raise ValueError(f"export.merged: {prefix} has no bias to fold the guidance embedding into")
        # linear_1(features + shift) = W features + (b + W shift)
        state[f"{prefix}.bias"] = (bias.float() + first.weight.float() @ shift.float()).to(bias.dtype)
    return state


def save_merged(denoiser: Denoiser, adapter: str, folder: str | Path, guidance: float | None = None) -> Path:
    """Write ``folder/<transformer|unet>`` (``save_pretrained``) of the merged backbone; returns it."""
    backbone = denoiser.backbone
    fresh = type(backbone).from_config(backbone.config)
    fresh.load_state_dict(merged_state_dict(denoiser, adapter, guidance))
    sub = denoiser.spec.lora_prefix  # "transformer" / "unet": the component folder diffusers expects
    with atomic_dir(Path(folder) / sub) as tmp:
        fresh.save_pretrained(tmp)
    return Path(folder) / sub


def save_original_keys(denoiser: Denoiser, adapter: str, folder: str | Path) -> Path:
    path = Path(folder) / ORIGINAL_KEYS_FILE
    save_file(original_key_lora(denoiser, adapter), str(path), metadata={"format": "pt"})
    return path


__all__ = ["MERGED_DIR", "ORIGINAL_KEYS_FILE", "merged_state_dict", "original_key_lora", "save_merged",
           "save_original_keys", "wan_original_name"]
