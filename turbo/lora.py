"""Saving and loading adapters in diffusers' LoRA format.

``pytorch_lora_weights.safetensors`` holds the peft state dict of one adapter with diffusers'
pipeline prefix (``transformer.`` for Wan, ``unet.`` for UNet families) and the LoRA config in
the safetensors metadata, so ``WanPipeline.load_lora_weights(folder)`` or
``model.load_lora_adapter(file, prefix="transformer")`` read it as is. The student's
guidance-scale embedding, which diffusers has no slot for, goes to
``guidance_embedding.safetensors`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from turbo.atomic import atomic_dir
from turbo.denoiser import Denoiser

WEIGHTS = "pytorch_lora_weights.safetensors"
GUIDANCE = "guidance_embedding.safetensors"
HAS_GUIDANCE = "turbo.guidance_embedding"  # metadata: "true" when GUIDANCE belongs beside the weights
MODEL_NAME = "turbo.model"  # metadata: the model config's name the adapter was trained on (model.name)


def lora_ranks(state: dict[str, torch.Size]) -> dict[str, int]:
    """Module name -> the rank its lora_A / lora_B tensors have (from shapes alone)."""
    ranks = {}
    for key, shape in state.items():
        if ".lora_A." in key:
            ranks[key.split(".lora_A.")[0]] = int(shape[0])
        elif ".lora_B." in key:
            ranks[key.split(".lora_B.")[0]] = int(shape[1])
    return ranks


def check_lora_tensors(path: Path, shapes: dict[str, torch.Size], rank: int, targets: list[str]) -> None:
    """The LoRA config in a file's metadata must describe its tensors (checked before any adapter
    is allocated): every module has the stated rank and is one of the target modules."""
    ranks = lora_ranks(shapes)
    if not ranks:
        raise ValueError(f"{path}: holds no lora_A / lora_B tensors")
    wrong = {m: r for m, r in ranks.items() if r != rank}
    if wrong:
        module, found = next(iter(wrong.items()))
        raise ValueError(f"{path}: its metadata says rank {rank}, but {len(wrong)} of its {len(ranks)} LoRA modules "
                         f"have rank {found} (first: {module}); the file is inconsistent")
    outside = [m for m in ranks if not any(m == t or m.endswith("." + t) for t in targets)]
    if outside:
        raise ValueError(f"{path}: its metadata lists target modules {targets}, but it holds LoRA tensors for "
                         f"{outside[0]} (and {len(outside) - 1} more outside them); the file is inconsistent")


def save_lora(denoiser: Denoiser, adapter: str, folder: str | Path, model: str | None = None) -> Path:
    """Write ``adapter`` to ``folder`` atomically; returns the folder. ``model``: the name of the model
    config it was trained on (``model.name``), kept in the metadata so that loading it onto another
    model can be caught."""
    prefix = denoiser.spec.lora_prefix
    state = get_peft_model_state_dict(denoiser.backbone, adapter_name=adapter)
    state = {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in state.items()}  # a copy: gathered (FSDP) weights are views of one buffer
    config = denoiser.backbone.peft_config[adapter].to_dict()
    # diffusers' pipelines (load_lora_weights) read only the metadata keys under the component's
    # prefix ("transformer.r", ...), the layout its own savers write
    config = {f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    with atomic_dir(folder) as tmp:
        has_guidance = adapter in denoiser.guidance_embeddings
        metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True),
                    HAS_GUIDANCE: json.dumps(has_guidance)}
        if model is not None:
            metadata[MODEL_NAME] = str(model)
        save_file(state, tmp / WEIGHTS, metadata=metadata)
        if adapter in denoiser.guidance_embeddings:
            save_file({k: v.detach().contiguous().cpu() for k, v in denoiser.guidance_embeddings[adapter].state_dict().items()},
                      tmp / GUIDANCE)
    return Path(folder)


def load_lora(denoiser: Denoiser, adapter: str, folder: str | Path) -> None:
    """Load weights saved by ``save_lora`` into an existing adapter of the same shape."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder}: expected {WEIGHTS} inside it, found none")
    prefix = denoiser.spec.lora_prefix + "."
    state = {k[len(prefix):]: v for k, v in load_file(folder / WEIGHTS).items() if k.startswith(prefix)}
    ours = {k: v.shape for k, v in get_peft_model_state_dict(denoiser.backbone, adapter_name=adapter).items()}
    theirs, here = lora_ranks({k: v.shape for k, v in state.items()}), lora_ranks(ours)
    if theirs and here and set(theirs.values()) != set(here.values()):
        raise ValueError(f"{folder / WEIGHTS}: a LoRA of rank {sorted(set(theirs.values()))[0]}, but adapter {adapter!r} "
                         f"here has rank {sorted(set(here.values()))[0]} (student.rank); use the rank it was trained with")
    result = set_peft_model_state_dict(denoiser.backbone, state, adapter_name=adapter)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected or not state:
        raise ValueError(f"{folder / WEIGHTS} does not fit adapter {adapter!r} of this "
                         f"{type(denoiser.backbone).__name__}: unexpected keys {unexpected[:5]}")
    if adapter in denoiser.guidance_embeddings:
        if not (folder / GUIDANCE).is_file():
            raise FileNotFoundError(f"{folder}: adapter {adapter!r} has a guidance embedding but {GUIDANCE} is missing")
        load_guidance_state(denoiser.guidance_embeddings[adapter], load_file(folder / GUIDANCE), folder / GUIDANCE)


# Where other code bases keep the same weight: diffusers' TimestepEmbedding(cond_proj_dim=256), i.e.
# T2V-Turbo (MS) checkpoints' ``time_embedding.cond_proj.weight`` (turbo.denoiser.GuidanceEmbedding).
GUIDANCE_ALIASES = ("linear.weight", "cond_proj.weight")


def load_guidance_state(embedding, state: dict, path) -> None:
    """Load a guidance embedding's weight from our file (``linear.weight``) or from a state dict that
    holds diffusers' ``...cond_proj.weight`` (one key); a wrong shape is one line naming ``path``."""
    keys = [k for k in state if k.endswith(GUIDANCE_ALIASES)]
    if len(keys) != 1:
        raise ValueError(f"{path}: expected one guidance weight ({' or '.join(GUIDANCE_ALIASES)}), found keys {sorted(state)[:5]}")
    weight = state[keys[0]]
    if weight.shape != embedding.linear.weight.shape:
        raise ValueError(f"{path}: guidance weight {keys[0]} is {tuple(weight.shape)}, this model needs "
                         f"{tuple(embedding.linear.weight.shape)} (timestep features x 256; the w embedding enters "
                         f"before the time MLP since 2026-12)")
    with torch.no_grad():
        embedding.linear.weight.copy_(weight)
