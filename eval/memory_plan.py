"""Will it fit? ``python -m eval.memory_plan model=wan2.1_t2v_14b objective=dmd2 gpus=8 gpu_memory=80``.

What each GPU holds while an objective trains a LoRA student of a real model, computed on the meta
device (no weights, no memory) from the model config's ``arch:`` node:

- the frozen base, bf16, fully sharded over the GPUs (FSDP: ``train.fsdp=true``), plus the two layers being gathered
  (the current one and the prefetched next);
- the adapters: the student (and DMD2 / W2S's critic) LoRA in fp32 with its gradient and AdamW's
  two moments (16 bytes per parameter), CD's EMA target as a fp32 copy; replicated (they are small);
- activations saved for backward: measured here on CPU for one and two layers of the model's real
  width (bf16, flash attention, ``torch.autograd.graph.saved_tensors_hooks``) at two small token
  counts, as ``tokens x (per_layer x layers + outside)`` (the slopes), extrapolated to the run's
  tokens; with ``gradient_checkpointing=true`` (the default here, ``train.gradient_checkpointing``
  in turbo-train) only each layer's input is kept, plus one layer's working set during its
  recompute;
- the text encoder (bf16, replicated; Wan's UMT5-XXL; 0 with ``data=cached``) and the VAE.

It also prints the shared-base layout against one that keeps three copies of the base (teacher,
student, critic) at that size. Options: ``frames height width batch rank gradient_checkpointing
cached`` (``key=value``). Everything else a run allocates (CUDA context, allocator slack, reward
models, the VAE decode's activations) is not counted: leave headroom.
"""

from __future__ import annotations

import sys

import torch

from eval.cache_bench import wan_text_and_vae_params

GB = 1e9
OPTIONS = {"model": "wan2.1_t2v_14b", "objective": "dmd2", "gpus": 8, "gpu_memory": 80.0, "frames": 81,
           "height": 480, "width": 832, "batch": 1, "rank": 64, "gradient_checkpointing": True, "cached": False}
ADAPTERS = {"cd": (1, 1), "dmd2": (2, 0), "w2s": (2, 0)}  # (trained adapters, fp32 EMA copies)


def parse(argv: list[str]) -> dict:
    opts = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in opts:
            raise SystemExit(f"memory_plan: expected key=value with key in {sorted(opts)}, found {arg!r}")
        default = OPTIONS[key]
        opts[key] = (value.lower() == "true") if isinstance(default, bool) else type(default)(value)
    if opts["objective"] not in ADAPTERS:
        raise SystemExit(f"memory_plan: objective must be one of {sorted(ADAPTERS)}, found {opts['objective']!r}")
    return opts


def _model_config(name: str):
    from turbo.config import compose_config

    return compose_config("train", [f"model={name}", "model.path=/unused"]).model


def lora_params(model: torch.nn.Module, targets: list[str], rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on every Linear whose name ends with a target."""
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))


def saved_bytes(model: torch.nn.Module, family: str, latent: tuple[int, int, int, int]) -> int:
    """Bytes autograd saves for backward in one forward pass (input requiring grad, as under a
    LoRA in every layer); tensors that are the frozen weights themselves are not counted."""
    from turbo.families import get_family
    from turbo.models.full import random_cond

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in weights:
            total += t.numel() * t.element_size()
        return t

    x = torch.randn(1, *latent, dtype=torch.bfloat16, requires_grad=True)
    cond = random_cond(model, family, 1, latent[1:], text_tokens=64, dtype=torch.bfloat16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        get_family(family).call(model, x, torch.tensor([500.0]), cond)
    return total


def activation_fit(family: str, arch: dict, channels: int) -> tuple[float, float]:
    """(bytes per token per layer, bytes per token outside the layers): the slopes in the token
    count of what 1 and 2 layers of the real width save, from 4 small CPU forwards (latent 4 x 4
    positions, 4 and 8 frames; the per-forward constants, such as the text tokens' keys and values,
    drop out of the slope and are negligible at real token counts)."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from turbo.models.full import random_backbone

    patch = arch.get("patch_size", [1, 2, 2])
    per_frame = (4 // patch[1]) * (4 // patch[2])
    slope = {}
    for layers in (1, 2):
        with warnings.catch_warnings():  # diffusers: "modules that should be kept in float32": a size, not a run
            warnings.simplefilter("ignore")
            verbosity = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()
            try:
                model = random_backbone(family, {**arch, "num_layers": layers}, device="cpu", dtype=torch.bfloat16)
            finally:
                diffusers_logging.set_verbosity(verbosity)
        model.requires_grad_(False)
        small, large = (saved_bytes(model, family, (channels, frames, 4, 4)) for frames in (4, 8))
        slope[layers] = (large - small) / (4 * per_frame)
        del model
    return slope[2] - slope[1], 2 * slope[1] - slope[2]


def plan(opts: dict) -> str:
    from turbo.models.full import latent_channels, parameter_count, random_backbone

    m = _model_config(opts["model"])
    if "arch" not in m:
        raise SystemExit(f"memory_plan: model={opts['model']} has no arch: node (conf/model/*.yaml)")
    arch = dict(m.arch)
    meta = random_backbone(m.family, arch)  # meta device
    base = parameter_count(meta)
    layers = arch.get("num_layers", 1)
    layer = max(parameter_count(b) for b in getattr(meta, "blocks", getattr(meta, "transformer_blocks", [meta])))
    lora = lora_params(meta, list(m.lora_targets), opts["rank"])
    trained, ema = ADAPTERS[opts["objective"]]
    channels = latent_channels(meta)
    latent_frames = (opts["frames"] - 1) // 4 + 1  # Wan / HunyuanVideo causal VAEs: 4x in time, 8x in space
    patch = arch.get("patch_size", [1, 2, 2])
    tokens = latent_frames * (opts["height"] // 8 // patch[1]) * (opts["width"] // 8 // patch[2])
    per_layer, outside = activation_fit(m.family, arch, channels)
    width = arch["num_attention_heads"] * arch["attention_head_dim"]
    if opts["gradient_checkpointing"]:
        acts = tokens * (layers * width * 2 + per_layer + outside)
    else:
        acts = tokens * (layers * per_layer + outside)
    acts *= opts["batch"]
    text_params, vae_params = wan_text_and_vae_params()
    text = 0 if opts["cached"] or m.family != "wan" else text_params * 2
    parts = {
        "frozen base (bf16, 1 / gpus)": base * 2 / opts["gpus"],
        "gathered layers (2 x one block, bf16)": 2 * layer * 2,
        f"adapters ({trained} trained x rank {opts['rank']} + {ema} EMA, fp32 + grad + AdamW)": lora * (16 * trained + 4 * ema),
        "activations saved for backward": acts,
        "text encoder (bf16" + (", cached: not loaded)" if opts["cached"] else ")"): text,
        "VAE (bf16)": vae_params * 2,
    }
    total = sum(parts.values())
    copies = total + 2 * base * 2 / opts["gpus"]
    fits = "fits" if total <= opts["gpu_memory"] * GB else "does NOT fit"
    lines = [f"{opts['model']}, objective={opts['objective']}, {opts['gpus']} GPUs x {opts['gpu_memory']:g} GB, "
             f"{opts['frames']} x {opts['height']} x {opts['width']} ({tokens} tokens), batch {opts['batch']} per GPU, "
             f"gradient checkpointing {'on' if opts['gradient_checkpointing'] else 'off'}", "",
             "| per GPU | GB |", "|---|---|"]
    lines += [f"| {k} | {v / GB:.2f} |" for k, v in parts.items()]
    lines += [f"| **total** | **{total / GB:.2f}** ({fits} in {opts['gpu_memory']:g}) |",
              f"| three copies of the base (teacher, student, critic) instead | {copies / GB:.2f} |",
              f"| shared / three copies | {total / copies:.2f}x |", "",
              f"base {base / 1e9:.2f} B parameters, LoRA {lora / 1e6:.1f} M per adapter; activations measured: "
              f"{per_layer / 1e3:.1f} kB per token per layer, {outside / 1e3:.1f} kB per token outside them (bf16, CPU "
              f"flash attention, slopes of 1 and 2 layers between 64 and 128 tokens)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    text = plan(parse(sys.argv[1:] if argv is None else argv))
    print(text)
    return text


if __name__ == "__main__":
    main()
