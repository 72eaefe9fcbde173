"""What one training step of each objective costs: ``python -m eval.objective_bench``.

For a tiny and a medium Wan-architecture model on CPU, prints the peak memory and the time of one
training step of CD, DMD2 and W2S, and the peak memory of the shared-base DMD2 step against a
layout that keeps three separate copies of the base weights (teacher, student, critic) as a ratio.

Each measurement runs in a fresh subprocess, so the peak resident set size (``ru_maxrss``) belongs
to that measurement alone; it is reported above the process's size after imports, so it counts
weights, optimizer state and activations. The three-copy layout is emulated by holding two extra
deep copies of the base weights beside the shared one, which is what such a layout adds (the
adapters and activations are the same in both).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch

SIZES = {  # WanTransformer3DModel arguments and the latent C,F,H,W of one sample
    "tiny": (dict(num_layers=2, num_heads=2, head_dim=16, ffn_dim=64, text_dim=32), (16, 3, 8, 8)),
    "medium": (dict(num_layers=8, num_heads=8, head_dim=64, ffn_dim=2048, text_dim=32), (16, 5, 16, 16)),
}


def rss_mb() -> float:
    """This process's peak resident set size in MB (``ru_maxrss``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_json(*argv: str) -> dict:
    """``python -m *argv`` in a fresh process (its peak memory its own): the JSON of its last line."""
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def random_wan(arch: dict, device: torch.device, dtype: torch.dtype, batch: int = 1, tokens: int = 64):
    """A seeded random Wan backbone of ``arch`` (WanTransformer3DModel arguments) as a Denoiser, and a
    random text condition of ``tokens`` tokens for ``batch`` videos: what the benches run (speed and
    memory do not depend on what was learned)."""
    from turbo.denoiser import Denoiser
    from turbo.models import tiny_wan
    from turbo.schedule import FlowSchedule
    from turbo.text import TextCond

    d = Denoiser(tiny_wan(seed=0, **arch), FlowSchedule(shift=5.0), "wan").to(device, dtype)
    embeds = torch.randn(batch, tokens, arch["text_dim"], device=device, dtype=dtype)
    return d, TextCond(embeds, torch.ones(batch, tokens, dtype=torch.long, device=device))


def training_step(objective: str, arch: dict, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, *,
                  copies: int = 0, rank: int = 8, batch: int = 1, reward=None, vae=None) -> dict:
    """One warm-up and one timed training step of ``objective`` ("cd" | "dmd2" | "w2s") on a
    random Wan backbone of ``arch`` (latent ``shape`` C,F,H,W), a LoRA student of ``rank``;
    ``copies`` extra deep copies of the base held alive (the three-copies layout); ``reward`` (a
    ``MixedReward``) with ``vae`` (a ``VideoVAE``): reward feedback on the student's x0, as
    turbo-train adds it. Returns the step's seconds, peak CUDA memory (GiB, NaN on CPU) and the
    base's parameter count. The one training-step measurement of eval.objective_bench and eval.gpu_bench."""
    from accelerate import Accelerator

    from distill.feedback import RewardFeedback
    from distill.objectives.base import Batch, group_loss
    from distill.objectives.cd import ConsistencyDistillation
    from distill.objectives.dmd2 import DMD2
    from distill.objectives.w2s import W2S
    from distill.train import make_optimizers, optimise
    from eval.speed import _sync

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    d, cond = random_wan(arch, device, dtype, batch)
    d.add_adapter("student", rank, rank, TARGETS)
    extra = [copy.deepcopy(d.backbone) for _ in range(copies)]
    obj = {"cd": lambda: ConsistencyDistillation(d), "dmd2": lambda: DMD2(d, dfake_gen_update_ratio=1),
           "w2s": lambda: W2S(d, dfake_gen_update_ratio=1)}[objective]()
    d.to(device)
    acc = Accelerator(cpu=device.type == "cpu")
    opts = make_optimizers(obj, acc)
    uncond = cond.replace(embeds=torch.zeros_like(cond.embeds))
    b = Batch(["a red circle moving left"] * batch, cond, uncond, shape,
              torch.randn(batch, *shape, device=device, dtype=dtype))
    feedback = None if reward is None else RewardFeedback(reward.to(device), vae.to(device))
    g = torch.Generator().manual_seed(0)
    seconds = []
    for step in range(2):  # the first step allocates optimizer state: time the second
        t0 = time.perf_counter()
        with acc.autocast():
            for group in obj.updates(step):
                losses = group_loss(obj, group, b, step, g)
                if feedback is not None and losses.x0 is not None:
                    losses.terms.update(feedback(losses.x0.to(dtype), b.prompts, g).terms)
                optimise(obj, opts, acc, group, losses, {})
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    assert len(extra) == copies  # the copies stayed alive through the steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    base = sum(p.numel() for n, p in d.backbone.named_parameters() if "lora_" not in n)
    return {"seconds": seconds[-1], "peak_gib": peak, "base_params_m": base / 1e6}


def measure(objective: str, size: str, layout: str, batch: int = 1) -> dict:
    """One step on CPU in this process: peak MB of resident memory above the start, step seconds."""
    torch.set_num_threads(2)
    base_mb = rss_mb()
    arch, shape = SIZES[size]
    r = training_step(objective, arch, shape, torch.device("cpu"), torch.float32,
                      copies=2 if layout == "copies" else 0, batch=batch)
    return {"objective": objective, "size": size, "layout": layout, "peak_mb": rss_mb() - base_mb,
            "step_sec": r["seconds"], "base_params_m": r["base_params_m"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", nargs=3, metavar=("OBJECTIVE", "SIZE", "LAYOUT"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", nargs="+", default=list(SIZES))
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(*a.one)))
        return
    rows = [child_json("eval.objective_bench", "--one", o, s, "shared") for s in a.sizes for o in ("cd", "dmd2", "w2s")]
    print("| size | base params (M) | objective | peak memory (MB) | step time (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['base_params_m']:.2f} | {r['objective']} | {r['peak_mb']:.0f} | {r['step_sec']:.3f} |")
    print()
    print("| size | DMD2 shared base (MB) | three copies (MB) | copies / shared |")
    print("|---|---|---|---|")
    for s in a.sizes:
        shared = next(r for r in rows if r["size"] == s and r["objective"] == "dmd2")
        copies = child_json("eval.objective_bench", "--one", "dmd2", s, "copies")
        print(f"| {s} | {shared['peak_mb']:.0f} | {copies['peak_mb']:.0f} | {copies['peak_mb'] / shared['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
