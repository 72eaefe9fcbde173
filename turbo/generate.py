"""``turbo-generate``: sample videos from teachers or trained student LoRAs.

Modes (``mode=``):

- ``t2v``: text -> video with a text-to-video model (``model``);
- ``i2v``: a given first frame (``image=<png/jpg>``, resized to cover and centre-cropped to the video
  size) + text -> video with an image-to-video model (a ``model`` config with an ``i2v`` node);
- ``t2i2v``: the factored pipeline (Magic 1-For-1, ``turbo.pipeline.t2i2v``): text -> first frame
  with ``image_stage.model`` (a one-frame video of any text-to-image or text-to-video model, with its
  own ``image_stage.lora`` and ``image_stage.sampler``) -> video with the I2V ``model``.

    load(cfg[, part])     config -> the video stage, or part="image_stage" mode=t2i2v's first-frame
                          stage (text encoder, VAE, Denoiser + the student adapter read from the
                          LoRA folder: rank, alpha and targets from its safetensors metadata)
    sample_latents(...)   one (prompt, seed) -> latents, with the configured sampler
    generate(cfg, out)    every prompt x seed -> ``{index:03d}_{seed}_{slug}.mp4``, ``grid.png``
                          (first frames, one row per prompt) and ``prompts.jsonl``

Each video's noise comes from its own generator seeded by its seed alone, so a (prompt, seed)
pair gives the same video whatever else is in the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig
from torch import Tensor
from tqdm.auto import tqdm

from turbo.config import (BOOL, CRF, DEVICE, MODEL, OPTIONAL_STRING, STRING, VIDEO, ConfigError, Rule, Section,
                          number, positive_int, report_errors)
from turbo.config import check_config as check_schema
from turbo.i2v import load_image
from turbo.long_video import generate_long
from turbo.paths import safe_name
from turbo.pipeline import Stage, check_lora_folder, load_stage, sampler_from_config, t2i2v
from turbo.video import VideoWriter, read_video, write_video

MODES = ("t2v", "i2v", "t2i2v")
SAMPLER = Section({
    "name": STRING, "steps": positive_int(nullable=True), "guidance": number(nullable=True),
    "teacher": Section({"steps": positive_int(), "guidance_scale": number(), "grid": STRING}),
})
# Every key turbo-generate reads (conf/generate.yaml); turbo.config.check_config refuses the rest.
GENERATE = {
    "model": MODEL, "mode": Rule((str,), lambda v: v in MODES, " or ".join(MODES)), "image": OPTIONAL_STRING,
    "prompts": Rule((list, str), expect="a list of prompts"), "prompt_file": OPTIONAL_STRING, "negative_prompt": STRING,
    "seeds": Rule((list, int), expect="a seed or a list of seeds"), "lora": OPTIONAL_STRING, "sampler": SAMPLER,
    "image_stage": Section({"model": MODEL, "lora": OPTIONAL_STRING, "sampler": SAMPLER}),
    "long": Section({"windows": positive_int(), "overlap": positive_int()}),
    "inference": Section({"merge_lora": BOOL, "quantize": OPTIONAL_STRING, "attention_backend": OPTIONAL_STRING,
                          "compile": BOOL}),
    "video": VIDEO, "fps": number(lambda v: v > 0, "a number > 0"), "crf": CRF,
    "device": DEVICE,
}


# --- config checks (before any model is built) --------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    check_schema(cfg, GENERATE)
    mode = cfg.mode
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not a mode; choose one of {', '.join(MODES)}")
    check_lora_folder(cfg.lora, "lora")
    sampler = sampler_from_config(cfg.sampler, cfg.lora, "sampler")
    if not seeds_of(cfg):
        raise ConfigError("seeds must list at least one seed, e.g. seeds=[0,1]")
    name = cfg.model.get("name", "?")
    if mode == "t2v" and cfg.model.get("i2v") is not None:
        raise ConfigError(f"model={name} is an image-to-video model (it has model.i2v): use mode=i2v with "
                          f"image=<an image file>, or mode=t2i2v; mode=t2v needs a text-to-video model")
    if mode in ("i2v", "t2i2v") and cfg.model.get("i2v") is None:
        raise ConfigError(f"mode={mode} needs an image-to-video model (a model config with an i2v node, e.g. "
                          f"model=tiny_wan_i2v), found model={name} without model.i2v")
    if mode == "i2v" and cfg.image is None:
        raise ConfigError("mode=i2v needs image=<an image file (png, jpg, ...)> for the first frame, found image=null")
    if mode != "i2v" and cfg.image is not None:
        raise ConfigError(f"image={cfg.image} is read by mode=i2v only, found mode={mode} "
                          f"(t2i2v makes its first frame with image_stage.model)")
    if mode == "t2i2v":
        check_image_stage(cfg.image_stage)
    if cfg.long.windows > 1:
        if mode != "t2v":
            raise ConfigError(f"long.windows={cfg.long.windows} (sliding-window videos) is for mode=t2v only, "
                              f"found mode={mode}")
        if sampler.name == "teacher" and sampler.grid != "index":
            raise ConfigError(f"long.windows > 1 samples on the index grid: set sampler.teacher.grid=index, "
                              f"found {sampler.grid}")


def check_image_stage(stage: DictConfig) -> None:
    """The factored pipeline's first-frame stage (turbo-generate mode=t2i2v, turbo-eval
    image_stage.model): a text-to-image or text-to-video model, its LoRA folder and sampler."""
    if stage.model.get("i2v") is not None:
        raise ConfigError(f"image_stage.model={stage.model.get('name', '?')} is an image-to-video model: the "
                          f"image stage makes the first frame from text (a text-to-image or text-to-video model)")
    check_lora_folder(stage.lora, "image_stage.lora")
    sampler_from_config(stage.sampler, stage.lora, "image_stage.sampler")


def prompts_of(cfg: DictConfig) -> list[str]:
    if cfg.prompt_file is not None:
        path = Path(str(cfg.prompt_file))
        if not path.is_file():
            raise FileNotFoundError(f"prompt_file={path}: no such file; expected a text file with one prompt per line")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"prompt_file={path}: holds no prompts (one per line expected)")
        return prompts
    prompts = cfg.prompts
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, ListConfig)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"prompts must be a non-empty list of strings (or set prompt_file), found {prompts!r}")
    return list(prompts)


def seeds_of(cfg: DictConfig) -> list[int]:
    seeds = cfg.seeds
    return [int(seeds)] if isinstance(seeds, int) else [int(s) for s in seeds]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --- models -------------------------------------------------------------------------------------
def load(cfg: DictConfig, part: str | None = None) -> Stage:
    """A stage of a turbo-generate or turbo-eval config, checked against ``video``: the video stage
    (``model`` with ``lora``, ``sampler`` and ``inference``) or, ``part="image_stage"``, mode=t2i2v's
    text -> first-frame stage (``image_stage.model`` with its own ``lora`` and ``sampler``)."""
    node, key = (cfg, "") if part is None else (cfg[part], f"{part}.")
    if part is None and cfg.inference.merge_lora and cfg.lora is None:
        raise ConfigError("inference.merge_lora=true needs a student: set lora=<run>/student")
    stage = load_stage(node.model, sampler_from_config(node.sampler, node.lora, f"{key}sampler"),
                       resolve_device(str(cfg.device)), lora=node.lora, inference=cfg.inference, key=f"{key}model",
                       lora_key=f"{key}lora")
    stage.vae.check_video_size(1 if part else cfg.video.num_frames, cfg.video.height, cfg.video.width, key="video")
    return stage


# --- sampling -----------------------------------------------------------------------------------
@torch.no_grad()
def sample_latents(pipe: Stage, cfg: DictConfig, prompt: str, seed: int, first_frame: Tensor | None = None) -> Tensor:
    """One video's latents (1,C,f,h,w) for ``prompt`` with noise from ``seed``; an I2V stage needs
    ``first_frame`` (3,H,W in [0, 1])."""
    v = cfg.video
    return pipe.latents([prompt], int(v.num_frames), int(v.height), int(v.width), torch.Generator().manual_seed(int(seed)),
                        cfg.negative_prompt, None if first_frame is None else first_frame[None])


def write_long(pipe: Stage, cfg: DictConfig, prompt: str, seed: int, path: Path) -> Path:
    """A ``long.windows``-window video streamed to ``path`` (turbo/long_video.py)."""
    v, lg = cfg.video, cfg.long
    cond, uncond = pipe.conditions([prompt], cfg.negative_prompt, int(v.num_frames))
    with VideoWriter(path, fps=cfg.fps, crf=cfg.crf) as writer:
        generate_long(pipe.denoiser, pipe.vae, cond, uncond, window_latent_frames=pipe.vae.latent_frames(v.num_frames),
                      overlap=int(lg.overlap), num_windows=int(lg.windows), sampler=pipe.sampler,
                      generator=torch.Generator().manual_seed(int(seed)), writer=writer,
                      height=int(v.height), width=int(v.width), role=pipe.role)
    return Path(path)


def generate(cfg: DictConfig, out_dir: str | Path) -> list[Path]:
    """Write one mp4 per (prompt, seed), ``grid.png`` and ``prompts.jsonl`` to ``out_dir``; return the mp4s."""
    from torchvision.utils import make_grid, save_image

    check_config(cfg)
    prompts, seeds = prompts_of(cfg), seeds_of(cfg)
    v = cfg.video
    # mode=i2v's first frame, 3,H,W in [0, 1] at the video size, before any model: a bad image fails fast
    image = load_image(str(cfg.image), int(v.height), int(v.width), key="image") if cfg.mode == "i2v" else None
    pipe = load(cfg)
    image_stage = load(cfg, "image_stage") if cfg.mode == "t2i2v" else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    paths, firsts, rows = [], [], []
    for i, (prompt, seed) in enumerate(tqdm(jobs, desc="generate", unit="video")):
        t0 = time.perf_counter()
        name = out / f"{i:03d}_{seed}_{safe_name(prompt, 48)}.mp4"
        if cfg.long.windows > 1:
            path, video = write_long(pipe, cfg, prompt, seed, name), None
        else:
            if image_stage is not None:
                video = t2i2v(image_stage, pipe, [prompt], seed, int(v.num_frames), int(v.height), int(v.width),
                                cfg.negative_prompt)[0].cpu()
            else:
                video = pipe.vae.decode(sample_latents(pipe, cfg, prompt, seed, image))[0].float().cpu()
            path = write_video(name, video, fps=cfg.fps, crf=cfg.crf)  # video: F,3,H,W in [0,1]
        seconds = time.perf_counter() - t0
        if video is None:
            video, _ = read_video(path, num_frames=1)
        paths.append(path)
        firsts.append(video[0])
        row = {"file": path.name, "prompt": prompt, "seed": seed, "mode": cfg.mode, **pipe.record()}
        if cfg.mode == "i2v":
            row["image"] = str(cfg.image)
        if image_stage is not None:
            row["image_stage"] = image_stage.record()
        rows.append({**row, "seconds": round(seconds, 4)})
    save_image(make_grid(torch.stack(firsts), nrow=len(seeds), padding=2, pad_value=1.0), out / "grid.png")
    (out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@hydra.main(config_path="pkg://conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    paths = report_errors("turbo-generate", lambda: generate(cfg, out))
    print(f"{len(paths)} videos in {out}")


if __name__ == "__main__":
    main()
