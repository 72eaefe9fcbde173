"""Test-time sliding window: a video of any length, generated window by window and streamed to an mp4.

Each window is an ordinary sample of ``window_latent_frames`` latent frames. Window n+1 is
conditioned on the end of window n without an image-to-video model, by RePaint-style latent
replacement: its first ``overlap`` latent frames are the *known* last ``overlap`` latent frames of
window n. Whenever the sampler brings the running sample to timestep t (the initial noise, after
every step) those frames are overwritten with the known latents re-noised to t
(``schedule.add_noise`` with fresh noise from the run's generator); at the clean end they are set
to the known latents themselves, so the overlap matches window n exactly. The samplers do this
through their ``after_step`` hook (``turbo.sampling``), so their loops are not copied here.

Seams. Every window is decoded on its own and only its *new* frames are written: the pixel frames
that its overlap latents decode to are skipped. For a causal VAE (Wan) latent frame 0 decodes to 1
pixel frame and each later one to 4 (``VideoVAE.pixel_frames``), so ``overlap`` latents cover
``1 + 4 (overlap - 1)`` pixel frames and a window adds ``4 (window - overlap)`` new ones; for a
per-frame VAE the counts are the latent counts. ``overlap = 0`` gives independent windows, written
whole, one after the other. Total frames written::

    pixel_frames(window) + (num_windows - 1) * (pixel_frames(window) - pixel_frames(overlap))

with ``pixel_frames(0) = 0``. Known limits of the seam: in window n+1 the first overlap latent sits
at position 0, where a causal VAE decodes one frame from it (in window n it decoded four), and the
new frames are decoded with only the overlap as their causal context, not the whole past; with
``overlap = 1`` the first new frame follows window n's last frame in time, but a small jump in
appearance at each seam is possible. The overlap's own pixels are never written twice.

Memory does not grow with the number of windows: only the overlap latents (cloned) are carried from
one window to the next, frames go to the ``VideoWriter`` as each window is decoded, and the
window's latents and pixels are dropped before the next window starts.

    python -m turbo.long_video --bench --windows 8   # peak-RSS probe used by the tests
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
from collections.abc import Iterator
import torch
from torch import Tensor

from turbo.denoiser import Denoiser, Role
from turbo.sampling import AfterStep, Sampler, initial_noise
from turbo.text import TextCond
from turbo.vae import VideoVAE
from turbo.video import VideoWriter

def replace_known(known: Tensor, denoiser: Denoiser, generator: torch.Generator) -> AfterStep:
    """An ``after_step`` hook that overwrites the first ``known.shape[2]`` latent frames of the
    sample with ``known`` re-noised to the sample's timestep (``t=None``: ``known`` itself)."""
    k = known.shape[2]

    def after_step(x: Tensor, t: int | None) -> Tensor:
        x = x.clone()
        if t is None:
            x[:, :, :k] = known
        else:
            noise = initial_noise(known.shape, generator, known.device).to(known.dtype)
            x[:, :, :k] = denoiser.schedule.add_noise(known, noise, t)
        return x

    return after_step


def new_pixel_frames(vae: VideoVAE, window_latent_frames: int, overlap: int) -> int:
    """Pixel frames a window after the first adds (its decoded frames minus those of its overlap)."""
    return vae.pixel_frames(window_latent_frames) - (vae.pixel_frames(overlap) if overlap else 0)


def total_pixel_frames(vae: VideoVAE, window_latent_frames: int, overlap: int, num_windows: int) -> int:
    return vae.pixel_frames(window_latent_frames) + (num_windows - 1) * new_pixel_frames(vae, window_latent_frames, overlap)


def _check(window_latent_frames: int, overlap: int, num_windows: int) -> None:
    if window_latent_frames < 1:
        raise ValueError(f"window_latent_frames must be >= 1, found {window_latent_frames}")
    if not 0 <= overlap < window_latent_frames:
        raise ValueError(f"overlap must be in 0..{window_latent_frames - 1} (< window_latent_frames), found {overlap}")
    if num_windows < 1:
        raise ValueError(f"num_windows must be >= 1, found {num_windows}")


@torch.no_grad()
def window_latents(denoiser: Denoiser, cond: TextCond, uncond: TextCond | None, latent_hw: tuple[int, int], *,
                   window_latent_frames: int, overlap: int, num_windows: int, sampler: Sampler,
                   generator: torch.Generator, role: Role = "teacher", channels: int | None = None) -> Iterator[Tensor]:
    """Yield each window's latents (B,C,window_latent_frames,h,w), window n+1 conditioned on the
    last ``overlap`` latent frames of window n, each window sampled by ``sampler`` (any
    ``turbo.sampling.Sampler``). ``latent_hw`` = (h, w) of the latents; ``channels`` defaults to
    the backbone's input channels."""
    _check(window_latent_frames, overlap, num_windows)
    if channels is None:
        channels = int(denoiser.backbone.config.in_channels)
    shape = (channels, window_latent_frames, *latent_hw)
    known: Tensor | None = None
    for _ in range(num_windows):
        hook = None if known is None or overlap == 0 else replace_known(known, denoiser, generator)
        x = sampler(denoiser, cond, uncond, shape, generator, role, after_step=hook)
        known = x[:, :, window_latent_frames - overlap:].clone() if overlap else None
        yield x
        del x


@torch.no_grad()
def generate_long(denoiser: Denoiser, vae: VideoVAE, cond: TextCond, uncond: TextCond | None, *,
                  window_latent_frames: int, overlap: int, num_windows: int, sampler: Sampler,
                  generator: torch.Generator, writer: VideoWriter, height: int, width: int,
                  role: Role = "teacher") -> int:
    """Generate ``num_windows`` windows of one video (``len(cond) == 1``) and stream their new frames
    to ``writer`` (an open ``VideoWriter``); return the number of frames written, which is
    ``total_pixel_frames(vae, window_latent_frames, overlap, num_windows)``. ``height``/``width`` are
    pixel sizes."""
    if len(cond) != 1:
        raise ValueError(f"generate_long writes one video: expected one prompt, found {len(cond)}")
    vae.check_video_size(vae.pixel_frames(window_latent_frames), height, width, key="long")
    skip = vae.pixel_frames(overlap) if overlap else 0
    written = 0
    windows = window_latents(denoiser, cond, uncond, (height // vae.spatial, width // vae.spatial),
                             window_latent_frames=window_latent_frames, overlap=overlap, num_windows=num_windows,
                             sampler=sampler, generator=generator, role=role, channels=vae.latent_channels)
    for n, latents in enumerate(windows):
        video = vae.decode(latents)[0].float().cpu()  # F,3,H,W in [0, 1]
        new = video if n == 0 else video[skip:]
        writer.write(new)
        written += len(new)
        del latents, video, new  # nothing of this window outlives it but the overlap latents
    return written


# --- memory probe (used by the tests) ---------------------------------------------------------------
def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _live_tensor_kib() -> int:
    """KiB of tensor storage reachable right now (each storage counted once). Deterministic, unlike
    the process's resident size, which the allocator and the video encoder blur."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) // 1024


def bench(windows: int, size: int, out: str, accumulate: bool = False) -> dict:
    """Peak RSS growth (KiB over the peak after building the models and a warm-up window written
    after 64 blank frames, which fill libx264's bounded lookahead) of a
    ``windows``-window run at ``size`` x ``size`` pixels, 3 latent frames (9 pixel frames) per
    window, overlap 1, one fixed step. ``accumulate`` also keeps every decoded window in a list:
    the variant that memory must not look like."""
    from turbo.models import tiny_text_encoder, tiny_wan, tiny_wan_vae
    from turbo.schedule import FlowSchedule

    torch.set_num_threads(1)
    denoiser = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan").eval()
    vae, text = tiny_wan_vae(seed=0), tiny_text_encoder(seed=0)
    cond = text(["a red circle moving right"])
    kw = dict(window_latent_frames=3, overlap=1, sampler=Sampler("fixed", timesteps=(999,)), height=size, width=size)
    with VideoWriter(out + ".warm.mp4") as w:  # warm-up: lazy inits, and a full encoder (below)
        # libx264 keeps a bounded lookahead (~50 frames, ~26 MB at 256x256) that fills over the
        # first frames of any file; fill it here so that filling is not mistaken for growth.
        # written in small chunks: ru_maxrss is a high-water mark, and one 64-frame tensor would
        # raise it above what the measured run needs, hiding real growth
        for _ in range(16):
            w.write(torch.zeros(4, 3, size, size))
        generate_long(denoiser, vae, cond, None, num_windows=1, generator=torch.Generator().manual_seed(0),
                      writer=w, **kw)
    gc.collect()
    base = _peak_kib()
    kept: list[Tensor] = []
    if accumulate:
        real = vae.decode

        def decode(latents: Tensor) -> Tensor:
            video = real(latents)
            kept.append(video)
            return video

        vae.decode = decode
    live: list[int] = []
    with VideoWriter(out) as w:
        write = w.write

        def write_and_probe(frames: Tensor) -> None:  # called once per window, with its frames
            live.append(_live_tensor_kib())
            write(frames)

        w.write = write_and_probe
        frames = generate_long(denoiser, vae, cond, None, num_windows=windows,
                               generator=torch.Generator().manual_seed(0), writer=w, **kw)
    return {"windows": windows, "frames": frames, "accumulate": accumulate, "base_kib": base,
            "growth_kib": _peak_kib() - base, "live_peak_kib": max(live), "kept": len(kept)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m turbo.long_video", description=__doc__.splitlines()[0])
    p.add_argument("--bench", action="store_true", help="print a peak-RSS probe as JSON")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--accumulate", action="store_true")
    p.add_argument("--out", default="long_bench.mp4")
    a = p.parse_args(argv)
    if not a.bench:
        p.error("only --bench is available; call turbo.long_video.generate_long to generate")
    print(json.dumps(bench(a.windows, a.size, a.out, a.accumulate)))


if __name__ == "__main__":
    main()
