"""A student folder for use outside turbo: the LoRA under the original checkpoint's key names, and a
merged full backbone.

``turbo-train`` always writes the diffusers LoRA (``pytorch_lora_weights.safetensors``, loadable
with a diffusers pipeline's ``load_lora_weights``) and ``sampler.json``. On request
(``export.original_keys``, ``export.merged``) it also writes

- ``lora_original_keys.safetensors``: the same LoRA under the key names of the model's original
  release, the layout ComfyUI-style loaders read: Wan2.1 ``diffusion_model.<module>.lora_down.weight``,
  ``.lora_up.weight`` and a scalar ``.alpha`` (the loader's ``alpha / rank`` scale equals peft's);
  HunyuanVideo ``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight``, where the release
  fuses q, k and v (and a single block's MLP input) into one Linear and the LoRA of the fused
  module stacks its members'. diffusers ships only the reading direction of these maps
  (``lora_conversion_utils._convert_non_diffusers_wan_lora_to_diffusers``,
  ``_convert_hunyuan_video_lora_to_diffusers``); the tests round-trip our files through them.
- ``merged/<transformer|unet>/``: the base weights with the LoRA folded in (``W + scale * B A``),
  a diffusers folder that ``<BackboneClass>.from_pretrained`` loads with no peft at all. A student
  with a guidance embedding samples at one w (its sampler's): the embedding's output at that w is a
  constant added to the time embedder's input, so it folds exactly into that MLP's first bias.
"""

from __future__ import annotations

import re
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

# HunyuanVideo's release fuses some projections into one Linear (q, k, v -> ``img_attn_qkv``; a single
# block's q, k, v and MLP input -> ``linear1``). Per block kind: the diffusers prefix, the original
# one, the fused modules (original name -> diffusers members, in the order of their output rows) and
# the plain renames. The inverse of diffusers' ``_convert_hunyuan_video_lora_to_diffusers``.
HUNYUAN_BLOCKS = (
    ("transformer_blocks", "double_blocks",
     {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
      "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")},
     {"attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj", "ff.net.0.proj": "img_mlp.fc1",
      "ff.net.2": "img_mlp.fc2", "ff_context.net.0.proj": "txt_mlp.fc1", "ff_context.net.2": "txt_mlp.fc2",
      "norm1.linear": "img_mod.linear", "norm1_context.linear": "txt_mod.linear"}),
    ("single_transformer_blocks", "single_blocks",
     {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")},
     {"proj_out": "linear2", "norm.linear": "modulation.linear"}),
    # diffusers' reader splits this fused LoRA's A as well as its B (a layout no other loader
    # uses); ours is the standard one, as for the blocks above
    ("context_embedder.token_refiner.refiner_blocks", "txt_in.individual_token_refiner.blocks",
     {"self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v")},
     {"attn.to_out.0": "self_attn_proj", "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2",
      "norm_out.linear": "adaLN_modulation.1"}),
)


def lora_layers(denoiser: Denoiser, adapter: str) -> dict[str, LoraLayer]:
    """Module name -> peft LoRA layer carrying ``adapter``."""
    layers = {name: m for name, m in denoiser.backbone.named_modules()
              if isinstance(m, LoraLayer) and adapter in m.lora_A}
    if not layers:
        raise KeyError(f"no LoRA layers of adapter {adapter!r}; adapters: {denoiser.adapters}")
    return layers


def wan_original_name(name: str) -> tuple[str, tuple[str, ...]]:
    """``blocks.3.attn1.to_q`` -> ``("blocks.3.self_attn.q", ("blocks.3.attn1.to_q",))``: the
    original module and the diffusers modules fused in it (Wan2.1 fuses none)."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in WAN_BLOCK_MODULES:
        return f"blocks.{parts[1]}.{WAN_BLOCK_MODULES[parts[2]]}", (name,)
    raise ValueError(f"student.target_modules: {name!r} has no name in Wan2.1's original checkpoints "
                     f"(known inside blocks.N: {', '.join(WAN_BLOCK_MODULES)})")


def hunyuan_original_name(name: str) -> tuple[str, tuple[str, ...]]:
    """``transformer_blocks.0.attn.to_k`` -> ``("double_blocks.0.img_attn_qkv", (<its q, k, v>))``."""
    for prefix, original, fused, renames in HUNYUAN_BLOCKS:
        match = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.(.+)", name)
        if match:
            index, inner = match.groups()
            for fused_name, members in fused.items():
                if inner in members:
                    return f"{original}.{index}.{fused_name}", tuple(f"{prefix}.{index}.{m}" for m in members)
            if inner in renames:
                return f"{original}.{index}.{renames[inner]}", (name,)
    known = sorted({m for _, _, fused, renames in HUNYUAN_BLOCKS for m in (*renames, *sum(fused.values(), ()))})
    raise ValueError(f"student.target_modules: {name!r} has no name in HunyuanVideo's original checkpoints "
                     f"(known inside {' / '.join(p + '.N' for p, *_ in HUNYUAN_BLOCKS)}: {', '.join(known)})")


# family -> (diffusers name -> original name and fused members, the file's A / B key names, whether
# it carries an alpha). Wan: ComfyUI's lora_down / lora_up / alpha. HunyuanVideo: the lora_A / lora_B
# under the release's names that diffusers reads; a fused module's rank is its members' ranks summed
# (A stacked, B block-diagonal), so each member's own scale is folded into B and there is no alpha.
ORIGINAL_LAYOUTS = {"wan": (wan_original_name, "lora_down", "lora_up", True),
                    "hunyuan": (hunyuan_original_name, "lora_A", "lora_B", False)}


def original_key_lora(denoiser: Denoiser, adapter: str) -> dict[str, Tensor]:
    """The adapter under the original release's key names: ``diffusion_model.<name>.<A>.weight``,
    ``.<B>.weight`` (and ``.alpha`` where the format has one)."""
    if denoiser.family not in ORIGINAL_LAYOUTS:
        raise ValueError(f"export.original_keys: no original key map for model.family={denoiser.family} "
                         f"(available: {', '.join(ORIGINAL_LAYOUTS)}); the diffusers LoRA is still written")
    rename, a_key, b_key, has_alpha = ORIGINAL_LAYOUTS[denoiser.family]
    layers, modules = lora_layers(denoiser, adapter), dict(denoiser.backbone.named_modules())
    groups: dict[str, tuple[str, ...]] = {}
    for name in layers:
        original, members = rename(name)
        groups[original] = members
    state = {}
    for original, members in groups.items():
        trained = [m for m in members if m in layers]
        down = torch.cat([layers[m].lora_A[adapter].weight.detach().float() for m in trained])
        outs = [modules[m].out_features for m in members]
        up = torch.zeros(sum(outs), down.shape[0])
        row = col = 0
        for member, out in zip(members, outs):
            if member in layers:
                layer = layers[member]
                rank = layer.lora_A[adapter].weight.shape[0]
                scale = 1.0 if has_alpha else float(layer.scaling[adapter])
                up[row:row + out, col:col + rank] = layer.lora_B[adapter].weight.detach().float() * scale
                col += rank
            row += out
        key = f"diffusion_model.{original}"
        state[f"{key}.{a_key}.weight"], state[f"{key}.{b_key}.weight"] = down.contiguous().cpu(), up.contiguous()
        if has_alpha:  # loaders scale by alpha / rank: peft's scaling times the rank is the alpha that matches
            state[f"{key}.alpha"] = torch.tensor(float(layers[members[0]].scaling[adapter]) * down.shape[0])
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
           "save_original_keys", "hunyuan_original_name", "wan_original_name"]
