"""What the latent / text cache saves: ``python -m eval.cache_bench``.

1. At the real size, on the meta device (no memory): the parameters each GPU holds resident while
   training Wan2.1-T2V-14B, uncached (transformer + VAE + UMT5-XXL text encoder) against cached
   (``data=cached``: the text encoder is not loaded; the VAE stays for reward feedback's decode).
2. At the toy size, measured here: the time of one training step of the embedded default
   (toy T2V teacher, CD + toy rewards) from ``data=toy`` against the same items from a
   ``turbo-cache`` folder (a warm-up step, then the median of repeats), and each process's peak
   resident memory (``ru_maxrss``, a fresh subprocess per arm).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from eval.objective_bench import child_json, rss_mb
from turbo.timing import median_seconds

# google/umt5-xxl (Wan2.1's text encoder, Wan-AI/*-Diffusers text_encoder/config.json)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu")


def wan_text_and_vae_params() -> tuple[int, int]:
    """Parameters of Wan2.1's UMT5-XXL text encoder and of its VAE, counted on the meta device."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from turbo.models.full import parameter_count

    with torch.device("meta"):
        return parameter_count(UMT5EncoderModel(UMT5Config(**UMT5_XXL))), parameter_count(AutoencoderKLWan())


def real_size_table() -> str:
    from turbo.config import compose_config
    from turbo.models.full import parameter_count, random_backbone

    arch = compose_config("train", ["model=wan2.1_t2v_14b", "model.path=/unused"]).model.arch
    text, vae = wan_text_and_vae_params()
    transformer = parameter_count(random_backbone("wan", arch))
    gb = 2 / 1e9  # bf16 bytes per parameter, in GB
    uncached, cached = transformer + vae + text, transformer + vae
    return "\n".join([
        "| Wan2.1-T2V-14B, resident per GPU (bf16) | parameters | GB |", "|---|---|---|",
        f"| transformer | {transformer / 1e9:.2f} B | {transformer * gb:.1f} |",
        f"| VAE (kept: reward feedback decodes) | {vae / 1e6:.0f} M | {vae * gb:.2f} |",
        f"| UMT5-XXL text encoder (not loaded with data=cached) | {text / 1e9:.2f} B | {text * gb:.1f} |",
        f"| uncached / cached | {uncached / 1e9:.2f} B / {cached / 1e9:.2f} B | "
        f"{uncached * gb:.1f} / {cached * gb:.1f} ({cached / uncached:.2f}x) |"])


def _child(arm: str, cache: str, steps: int) -> None:
    """One arm in this process: a warm-up, then the median seconds of ``steps`` training steps; prints
    them with the peak memory as JSON."""
    from distill.train import setup, train_step
    from turbo.config import compose_config

    data = ["data.size=64"] if arm == "plain" else ["data=cached", f"data.dir={cache}"]
    cfg = compose_config("train", [*data, "~eval", "device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        run, step = setup(cfg, Path(tmp)), itertools.count()
        seconds = median_seconds(lambda: train_step(run, next(step)), repeats=steps)
        run.out.unlock()
    print(json.dumps({"seconds": seconds, "peak_mb": rss_mb()}))


def toy_table(steps: int) -> str:
    from distill.cache import build_cache
    from turbo.config import compose_config

    with tempfile.TemporaryDirectory() as cache:
        build_cache(compose_config("cache", ["data.size=64", f"cache.dir={cache}", "device=cpu"]))
        rows = {arm: child_json("eval.cache_bench", "--child", arm, "--cache", cache, "--steps", str(steps))
                for arm in ("plain", "cached")}
    (t_plain, m_plain), (t_cached, m_cached) = ((rows[a]["seconds"], rows[a]["peak_mb"]) for a in ("plain", "cached"))
    return "\n".join([
        f"| toy default (CD + toy rewards, batch 4), {steps} steps | s / step (median) | peak RSS MB |",
        "|---|---|---|", f"| data=toy (encodes every step) | {t_plain:.3f} | {m_plain:.0f} |",
        f"| data=cached | {t_cached:.3f} | {m_cached:.0f} |",
        f"| cached / plain | {t_cached / t_plain:.2f}x | {m_cached / m_plain:.2f}x |"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m eval.cache_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", choices=("plain", "cached"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.cache, args.steps)
        return ""
    text = real_size_table() + "\n\n" + toy_table(args.steps)
    from eval.toy_teachers import emit

    return emit(text, args.out)


if __name__ == "__main__":
    main()
