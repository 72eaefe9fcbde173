"""What reward feedback's partial decode saves: ``python -m eval.decode_bench``.

Reward feedback decodes only the frames its reward terms score (``VideoVAE.decode_frames``,
activation-checkpointed). This prints, for the real VAE architectures at a small resolution with
random weights, the peak memory and time of a differentiable decode plus backward of M of F frames
against all F, as a ratio:

- SD's per-frame ``AutoencoderKL`` (ModelScope, VideoCrafter2): only the M chosen latent frames;
- Wan's causal ``AutoencoderKLWan``: the latent prefix up to the last chosen frame (so the saving
  depends on where the frames fall; we report the first M frames, the best case, and frames spread
  over the clip, the worst).

Each measurement runs in its own subprocess; peak memory is ``ru_maxrss`` above the process's
size once the VAE is built.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from eval.objective_bench import child_json, rss_mb


def _vae(kind: str):
    from diffusers import AutoencoderKL, AutoencoderKLWan

    from turbo.vae import VideoVAE

    torch.manual_seed(0)
    if kind == "sd":
        return VideoVAE(AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                                      down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2))
    return VideoVAE(AutoencoderKLWan())  # Wan2.1's VAE: base_dim 96, z_dim 16


def measure(kind: str, frames: str, num_frames: int, size: int, m: int) -> dict:
    torch.set_num_threads(2)
    vae = _vae(kind)
    base = rss_mb()
    lat = torch.randn(1, *vae.latent_shape(num_frames, size, size), requires_grad=True)
    total = vae.pixel_frames(lat.shape[2])
    if frames == "all":
        ids = torch.arange(total)
    elif frames == "first":
        ids = torch.arange(m)
    else:  # spread over the clip, the last frame included
        ids = torch.linspace(0, total - 1, m).round().long()
    t0 = time.perf_counter()
    out = vae.decode(lat) if frames == "all" else vae.decode_frames(lat, ids)
    out.mean().backward()
    return {"kind": kind, "frames": frames, "decoded": len(ids), "of": total,
            "peak_mb": rss_mb() - base, "sec": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--m", type=int, default=2, help="frames the image reward scores (T2V-Turbo v2: 2)")
    a = p.parse_args()
    if a.one:
        kind, frames, f, s, m = a.one
        print(json.dumps(measure(kind, frames, int(f), int(s), int(m))))
        return

    def run(kind, frames):
        return child_json("eval.decode_bench", "--one", kind, frames, str(a.frames), str(a.size), str(a.m))

    print(f"{a.frames} frames at {a.size}x{a.size}, decode + backward, M = {a.m}")
    print("| VAE | frames decoded | peak memory (MB) | time (s) | memory vs all F |")
    print("|---|---|---|---|---|")
    for kind, choices in (("sd", ("all", "spread")), ("wan", ("all", "first", "spread"))):
        rows = [run(kind, c) for c in choices]
        for r in rows:
            print(f"| {kind} | {r['frames']}: {r['decoded']} of {r['of']} | {r['peak_mb']:.0f} | {r['sec']:.2f} | "
                  f"{r['peak_mb'] / rows[0]['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
