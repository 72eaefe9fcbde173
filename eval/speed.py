"""What few steps and int8 buy: ``python -m eval.speed``.

For one network (random weights: speed does not depend on what was learned), prints the time per
video of the 50-step CFG teacher (100 network evaluations) against a 4-step student (4
evaluations), and the weight memory of bf16 against int8 (optimum-quanto), as ratios.

``--size tiny`` is the CPU-sized default; ``--size wan1.3b`` builds the real Wan2.1-1.3B shape
(30 layers, 12 heads x 128, ffn 8960, text 4096) for the GPU, at 480x832 and 81 frames
(21 x 60 x 104 latents) unless ``--frames/--height/--width`` say otherwise. ``--size`` also takes
any real model config name (``conf/model/<name>.yaml`` with an ``arch:`` node: ``sdxl``,
``hunyuanvideo_t2v``, ``wan2.1_t2v_14b``, ...), built by ``turbo.models.random_backbone`` with its
schedule and LoRA targets, at 480x832 / 81 frames for video transformers, 256x256 / 16 frames for
ModelScope and the native size for image models.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from eval.objective_bench import random_wan
from turbo.denoiser import Denoiser
from turbo.inference import prepare_for_inference, weight_bytes
from turbo.models import random_backbone, random_cond
from turbo.sampling import Sampler
from turbo.timing import median_seconds, speedup_bound

SIZES = {
    "tiny": (dict(num_layers=4, num_heads=4, head_dim=32, ffn_dim=512, text_dim=32), (16, 5, 16, 16)),
    "wan1.3b": (dict(num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, text_dim=4096), (16, 21, 60, 104)),
}
MODEL_CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


def real_configs() -> list[str]:
    """Model configs with an ``arch:`` node (full-size architectures)."""
    from omegaconf import OmegaConf

    return sorted(p.stem for p in MODEL_CONF.glob("*.yaml") if "arch" in OmegaConf.load(p))


def _real(name: str, dev: torch.device, dtype: torch.dtype, shape: tuple[int, ...] | None):
    """(denoiser, LoRA targets, cond, uncond, latent shape) for real model config ``name``."""
    from omegaconf import OmegaConf

    from turbo.config import build

    m = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    backbone = random_backbone(m.family, m.arch, device=dev, dtype=dtype)
    d = Denoiser(backbone, build(m.schedule, "model.schedule"), m.family)
    cfg = backbone.config
    channels = cfg.out_channels or cfg.in_channels
    if shape is not None and shape[0] is None:
        shape = (channels, *shape[1:])
    if shape is None:
        if m.family in ("wan", "hunyuan"):
            shape = (channels, 21, 60, 104)
        elif m.family == "unet3d":
            shape = (channels, 16, 32, 32)
        else:
            shape = (channels, 1, cfg.sample_size, cfg.sample_size)
    cond = random_cond(backbone, m.family, 1, shape[1:], device=dev, dtype=dtype,
                       generator=torch.Generator().manual_seed(0))
    uncond = cond.replace(embeds=torch.zeros_like(cond.embeds),
                          pooled=None if cond.pooled is None else torch.zeros_like(cond.pooled))
    return d, list(m.lora_targets), cond, uncond, shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_per_video(fn, device: torch.device, repeats: int) -> float:
    """A warm-up call, then the median of ``repeats`` (turbo.timing), the device synchronised."""
    def call():
        fn()
        _sync(device)
    return median_seconds(call, repeats=repeats, warmup=1)


def run(size: str, device: str, dtype: torch.dtype, repeats: int, shape: tuple[int, ...] | None = None) -> dict:
    dev = torch.device(device)
    if size in SIZES:
        kwargs, default_shape = SIZES[size]
        shape = shape or default_shape
        d, cond = random_wan(kwargs, dev, dtype, tokens=32)
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        uncond = cond.replace(embeds=torch.zeros_like(cond.embeds))
    elif size in real_configs():
        d, targets, cond, uncond, shape = _real(size, dev, dtype, shape)
    else:
        raise ValueError(f"--size must be one of {list(SIZES) + real_configs()}, found {size!r}")
    d.add_adapter("student", 8, 8, targets)
    d.to(dev, dtype)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    teacher_sampler, student_sampler = Sampler("teacher", steps=50, guidance_scale=5.0), Sampler("consistency", steps=4)
    with torch.no_grad():
        teacher = time_per_video(lambda: teacher_sampler(d, cond, uncond, shape, g(), "teacher"), dev, repeats)
        student = time_per_video(lambda: student_sampler(d, cond, uncond, shape, g(), "student"), dev, repeats)
    bf16 = weight_bytes(copy.deepcopy(d.backbone).to(torch.bfloat16))
    int8 = None
    try:
        q = copy.deepcopy(d)
        prepare_for_inference(q, merge="student", quantize="int8")
        int8 = weight_bytes(q.backbone)
    except ImportError:
        pass
    return {"size": size, "device": device, "dtype": str(dtype), "latent": shape, "teacher_s": teacher,
            "student_s": student, "teacher_nfe": teacher_sampler.nfe, "student_nfe": student_sampler.nfe,
            "speedup": teacher / student, "speedup_bound": speedup_bound(teacher_sampler.nfe, student_sampler.nfe), "bf16_mb": bf16 / 2**20, "int8_mb": None if int8 is None else int8 / 2**20,
            "params_m": sum(p.numel() for n, p in d.backbone.named_parameters() if "lora_" not in n) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES) + real_configs(), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames", type=int, help="latent frames")
    p.add_argument("--height", type=int, help="latent height")
    p.add_argument("--width", type=int, help="latent width")
    a = p.parse_args()
    # real configs: the channel count is the backbone's own (None: filled in by run)
    shape = ((16 if a.size in SIZES else None), a.frames, a.height, a.width) if a.frames else None
    r = run(a.size, a.device, getattr(torch, a.dtype), a.repeats, shape)
    repeats = a.repeats
    print(f"{r['size']} ({r['params_m']:.1f} M params), {r['device']}, {r['dtype']}, latent {tuple(r['latent'])}")
    print("| sampler | network evaluations | sec / video |")
    print("|---|---|---|")
    print(f"| teacher, 50 steps, CFG | {r['teacher_nfe']} | {r['teacher_s']:.4f} |")
    print(f"| student, 4 steps | {r['student_nfe']} | {r['student_s']:.4f} |")
    print(f"teacher / student time: {r['speedup']:.1f}x (the network evaluations allow at most "
          f"{r['speedup_bound']:.1f}x; median of {repeats} after a warm-up)")
    if r["int8_mb"] is None:
        print(f"weights bf16 {r['bf16_mb']:.1f} MB; int8 needs optimum-quanto (pip install 'turbo[quant]')")
    else:
        print(f"weights bf16 {r['bf16_mb']:.1f} MB, int8 {r['int8_mb']:.1f} MB: bf16 / int8 = "
              f"{r['bf16_mb'] / r['int8_mb']:.2f}x")


if __name__ == "__main__":
    main()
