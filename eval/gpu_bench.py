"""The GPU benchmark, for the first lent GPU: ``python -m eval.gpu_bench --out docs/benchmarks.md``.

Random weights (speed and memory do not depend on what was learned), bf16, one device. Rows, each
printed and appended to ``--out`` under a heading with the date and the device name:

1. Wan2.1-1.3B at 480p, 81 frames (latent 16 x 21 x 60 x 104): the 50-step CFG teacher (100 network
   evaluations) against the 4-step student, each end to end with the Wan VAE's decode, seconds per
   video (a warm-up, then the median of ``--repeats``), and the ratio beside its NFE bound;
2. the transformer's forward + backward: FLOPs counted by ``torch.utils.flop_counter`` on the same
   input, seconds (median), achieved TFLOP/s and MFU against ``--peak-tflops`` (989: H100 / H200 SXM
   dense bf16);
3. one training step (the second; the first allocates optimizer state) of CD and of DMD2, seconds and
   peak allocated memory, and DMD2 with two extra copies of the base (the three-copies layout);
4. the weights in bf16 against int8 (optimum-quanto).

``--size tiny --device cpu`` runs the same code on a small network (the test does). Not measured here
yet: CD + reward feedback, and the sliding-window video's seconds of video per second.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import time

import torch

from eval.speed import SIZES, _sync, run as sampling_speed, time_per_video

LATENT = {"tiny": (16, 5, 16, 16), "wan1.3b": (16, 21, 60, 104)}
VAE = {"tiny": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1), "wan1.3b": {}}


def _denoiser(size: str, device: torch.device, dtype: torch.dtype):
    from turbo.denoiser import Denoiser
    from turbo.models import tiny_wan
    from turbo.schedule import FlowSchedule

    kwargs, _ = SIZES[size]
    d = Denoiser(tiny_wan(seed=0, **kwargs), FlowSchedule(shift=5.0), "wan").to(device, dtype)
    cond_dim = kwargs["text_dim"]
    from turbo.text import TextCond

    cond = TextCond(torch.randn(1, 64, cond_dim, device=device, dtype=dtype), torch.ones(1, 64, dtype=torch.long, device=device))
    return d, cond


def decode_seconds(size: str, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**VAE[size]).to(device, dtype).eval()
    z = torch.randn(1, *LATENT[size], device=device, dtype=dtype)
    with torch.no_grad():
        return time_per_video(lambda: vae.decode(z), device, repeats)


def forward_backward(size: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """FLOPs (counted) and time of one forward + backward of the transformer on one latent."""
    from torch.utils.flop_counter import FlopCounterMode

    d, cond = _denoiser(size, device, dtype)
    d.backbone.requires_grad_(True)  # a full backward (input and weight gradients): the usual MFU
    x = torch.randn(1, *LATENT[size], device=device, dtype=dtype)
    t = torch.tensor([500.0], device=device)

    def step():
        d.backbone.zero_grad(set_to_none=True)
        d.raw(x, t, cond).float().square().mean().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    seconds = time_per_video(step, device, repeats)
    return {"flops": counter.get_total_flops(), "seconds": seconds}


def training_step(objective: str, size: str, device: torch.device, dtype: torch.dtype, copies: int = 0) -> dict:
    from accelerate import Accelerator

    from distill.objectives.base import Batch, group_loss
    from distill.objectives.cd import ConsistencyDistillation
    from distill.objectives.dmd2 import DMD2
    from distill.train import make_optimizers, optimise

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    d, cond = _denoiser(size, device, dtype)
    d.add_adapter("student", 64, 64, ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    d.to(device)
    extra = [copy.deepcopy(d.backbone) for _ in range(copies)]
    obj = {"cd": lambda: ConsistencyDistillation(d), "dmd2": lambda: DMD2(d, dfake_gen_update_ratio=1)}[objective]()
    d.to(device)
    acc = Accelerator(cpu=device.type == "cpu")
    opts = make_optimizers(obj, acc)
    uncond = cond.replace(embeds=torch.zeros_like(cond.embeds))
    shape = LATENT[size]
    batch = Batch(["p"], cond, uncond, shape, torch.randn(1, *shape, device=device, dtype=dtype))
    g = torch.Generator().manual_seed(0)
    seconds = []
    for step in range(2):
        t0 = time.perf_counter()
        with acc.autocast():
            for group in obj.updates(step):
                optimise(obj, opts, acc, group, group_loss(obj, group, batch, step, g), {})
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    assert len(extra) == copies
    return {"seconds": seconds[-1], "peak_gib": peak}


def bench(size: str, device: str, repeats: int, peak_tflops: float) -> str:
    dev, dtype = torch.device(device), torch.bfloat16
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    speed = sampling_speed(size, device, dtype, repeats, LATENT[size])
    decode = decode_seconds(size, dev, dtype, repeats)
    teacher, student = speed["teacher_s"] + decode, speed["student_s"] + decode
    fb = forward_backward(size, dev, dtype, repeats)
    tflops = fb["flops"] / fb["seconds"] / 1e12
    steps = {k: training_step(o, size, dev, dtype, c) for k, (o, c) in
             {"cd": ("cd", 0), "dmd2": ("dmd2", 0), "dmd2, three copies": ("dmd2", 2)}.items()}
    int8 = "n/a (pip install 'turbo[quant]')" if speed["int8_mb"] is None else f"{speed['int8_mb']:.0f} MB"
    lines = [f"### GPU benchmark — `python -m eval.gpu_bench --size {size}` ({datetime.date.today()}, {name})", "",
             f"Wan2.1 architecture ({speed['params_m']:.0f} M parameters, random weights), bf16, latent "
             f"{tuple(LATENT[size])}; a warm-up, then the median of {repeats}.", "",
             "| what | value |", "|---|---|",
             f"| teacher, 50 steps CFG (100 NFE), sampling + VAE decode | {teacher:.2f} s / video |",
             f"| student, 4 steps (4 NFE), sampling + VAE decode | {student:.2f} s / video |",
             f"| teacher / student | {teacher / student:.1f}x (NFE bound {speed['speedup_bound']:.1f}x; "
             f"sampling alone {speed['speedup']:.1f}x; decode {decode:.2f} s) |",
             f"| transformer forward + backward (full backward) | {fb['seconds'] * 1e3:.1f} ms, {fb['flops'] / 1e12:.3g} TFLOP, "
             f"{tflops:.3g} TFLOP/s = {100 * tflops / peak_tflops:.3g} % MFU of {peak_tflops:g} |"]
    for k, r in steps.items():
        peak = "n/a on CPU" if dev.type == "cpu" else f"{r['peak_gib']:.1f} GiB"
        lines.append(f"| training step, {k} (LoRA rank 64) | {r['seconds']:.3f} s, peak {peak} |")
    shared, three = steps["dmd2"]["peak_gib"], steps["dmd2, three copies"]["peak_gib"]
    ratio = "n/a on CPU" if dev.type == "cpu" else f"{shared / three:.2f}x peak memory"
    lines += [f"| DMD2 shared base / three copies | {ratio} |",
              f"| weights bf16 / int8 | {speed['bf16_mb']:.0f} MB / {int8} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m eval.gpu_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(LATENT), default="wan1.3b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--out", help="append the rows to this markdown file (docs/benchmarks.md)")
    a = p.parse_args(argv)
    text = bench(a.size, a.device, a.repeats, a.peak_tflops)
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text + "\n")
    return text


if __name__ == "__main__":
    main()
