"""The GPU benchmark, for the first lent GPU: ``python -m eval.gpu_bench --out docs/benchmarks.md``.

Random weights (speed and memory do not depend on what was learned), bf16, one device. Rows, each
printed and appended to ``--out`` under a heading with the date and the device name:

1. Wan2.1-1.3B at 480p, 81 frames (latent 16 x 21 x 60 x 104): the 50-step CFG teacher (100 network
   evaluations) against the 4-step student, each end to end with the Wan VAE's decode, seconds per
   video (a warm-up, then the median of ``--repeats``), and the ratio beside its NFE bound;
2. the transformer's forward + backward: FLOPs counted by ``torch.utils.flop_counter`` on the same
   input, seconds (median), achieved TFLOP/s and MFU against ``--peak-tflops`` (989: H100 / H200 SXM
   dense bf16);
3. one training step (the second; the first allocates optimizer state) of CD, of CD + reward
   feedback (HPSv2's ViT-H-14 on 5 decoded frames, the Wan VAE's partial decode) and of DMD2,
   seconds and peak allocated memory, and DMD2 with two extra copies of the base (the
   three-copies layout) (eval.objective_bench.training_step);
4. the 4-step student's sliding-window video (3 windows of 81 frames, 5 latent frames of overlap,
   decoded and written): seconds of video per wall second;
5. the weights in bf16 against int8 (optimum-quanto).

``--size tiny --device cpu`` runs the same code on a small network (the test does).
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch

from eval.objective_bench import random_wan, training_step
from eval.speed import SIZES, _sync, run as sampling_speed, time_per_video

LATENT = {"tiny": (16, 5, 16, 16), "wan1.3b": (16, 21, 60, 104)}
VAE = {"tiny": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1), "wan1.3b": {}}


def decode_seconds(size: str, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    vae = _wan_vae(size).to(device, dtype)
    z = torch.randn(1, *LATENT[size], device=device, dtype=dtype)
    with torch.no_grad():
        return time_per_video(lambda: vae.decode(z), device, repeats)


def forward_backward(size: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """FLOPs (counted) and time of one forward + backward of the transformer on one latent."""
    from torch.utils.flop_counter import FlopCounterMode

    d, cond = random_wan(SIZES[size][0], device, dtype)
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


def feedback_reward(size: str, device: torch.device, dtype: torch.dtype):
    """T2V-Turbo's image-text term at its real size (HPSv2's ViT-H-14, random weights, 5 frames), or
    the tiny open_clip model for ``--size tiny``; and the Wan VAE that decodes the frames it scores."""
    import open_clip

    from rewards.hpsv2 import HPSv2Reward, hpsv2_model, tiny_hpsv2_reward
    from rewards.mixture import MixedReward, RewardTerm
    from turbo.vae import VideoVAE

    if size == "tiny":
        reward = tiny_hpsv2_reward(seed=0, image_size=32)
    else:
        reward = HPSv2Reward(hpsv2_model("ViT-H-14"), open_clip.get_tokenizer("ViT-H-14"), image_size=224)
    reward = reward.to(device, dtype)
    vae = VideoVAE(_wan_vae(size)).to(device, dtype)
    return MixedReward([RewardTerm("hpsv2", reward, 1.0, num_frames=5)]), vae


def _wan_vae(size: str):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**VAE[size]).eval()


def long_video(size: str, device: torch.device, dtype: torch.dtype, windows: int = 3) -> dict:
    """Seconds of video per wall second of the 4-step student's sliding-window video: ``windows``
    windows of the latent's length (81 frames at Wan's 16 fps for wan1.3b), 5 latent frames of
    overlap, each decoded and streamed to an mp4 (turbo.long_video.generate_long); one warm-up window."""
    import tempfile

    from turbo.long_video import generate_long
    from turbo.sampling import Sampler
    from turbo.vae import VideoVAE
    from turbo.video import VideoWriter

    d, cond = random_wan(SIZES[size][0], device, dtype)
    vae = VideoVAE(_wan_vae(size)).to(device, dtype)
    _, frames, h, w = LATENT[size]
    overlap = min(5, frames - 1)
    kw = dict(window_latent_frames=frames, overlap=overlap, sampler=Sampler("consistency", steps=4, grid_steps=50),
              height=h * 8, width=w * 8)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        with VideoWriter(f"{tmp}/warm.mp4", fps=16) as writer:
            generate_long(d, vae, cond, None, num_windows=1, generator=torch.Generator().manual_seed(0), writer=writer, **kw)
        _sync(device)
        t0 = time.perf_counter()
        with VideoWriter(f"{tmp}/long.mp4", fps=16) as writer:
            written = generate_long(d, vae, cond, None, num_windows=windows, generator=torch.Generator().manual_seed(0),
                                    writer=writer, **kw)
        _sync(device)
        seconds = time.perf_counter() - t0
    return {"frames": written, "seconds": seconds, "video_per_wall": written / 16 / seconds}


def bench(size: str, device: str, repeats: int, peak_tflops: float) -> str:
    dev, dtype = torch.device(device), torch.bfloat16
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    speed = sampling_speed(size, device, dtype, repeats, LATENT[size])
    decode = decode_seconds(size, dev, dtype, repeats)
    teacher, student = speed["teacher_s"] + decode, speed["student_s"] + decode
    fb = forward_backward(size, dev, dtype, repeats)
    tflops = fb["flops"] / fb["seconds"] / 1e12
    arch, shape = SIZES[size][0], LATENT[size]
    reward, vae = feedback_reward(size, dev, dtype)
    arms = {"cd": ("cd", 0, None), "cd + reward feedback (HPSv2, 5 frames)": ("cd", 0, reward),
            "dmd2": ("dmd2", 0, None), "dmd2, three copies": ("dmd2", 2, None)}
    steps = {k: training_step(o, arch, shape, dev, dtype, copies=c, rank=64, reward=r, vae=vae)
             for k, (o, c, r) in arms.items()}
    long = long_video(size, dev, dtype)
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
    fed = steps["cd + reward feedback (HPSv2, 5 frames)"]["seconds"] / steps["cd"]["seconds"]
    lines.append(f"| reward feedback's cost | {100 * (fed - 1):+.0f} % step time over CD |")
    shared, three = steps["dmd2"]["peak_gib"], steps["dmd2, three copies"]["peak_gib"]
    ratio = "n/a on CPU" if dev.type == "cpu" else f"{shared / three:.2f}x peak memory"
    lines += [f"| DMD2 shared base / three copies | {ratio} |",
              f"| sliding-window video, 4-step student, {long['frames']} frames at 16 fps | "
              f"{long['video_per_wall']:.2f} s of video per wall second ({long['seconds']:.1f} s) |",
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
