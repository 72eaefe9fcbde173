"""``turbo-generate``: sample videos from a teacher or a trained student LoRA (text -> video).

    load(cfg)             config -> text encoder, VAE, Denoiser (+ the student adapter read from
                          the LoRA folder: rank, alpha and targets from its safetensors metadata)
    sample_latents(...)   one (prompt, seed) -> latents, with the configured sampler
    generate(cfg, out)    every prompt x seed -> ``{index:03d}_{seed}_{slug}.mp4``, ``grid.png``
                          (first frames, one row per prompt) and ``prompts.jsonl``

Each video's noise comes from its own generator seeded by its seed alone, so a (prompt, seed)
pair gives the same video whatever else is in the run.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from turbo.config import ConfigError, build
from turbo.denoiser import Denoiser, Role
from turbo.lora import GUIDANCE, WEIGHTS, load_lora
from turbo.sampling import sample_consistency, sample_fixed_steps, sample_teacher
from turbo.schedule import ConsistencyBoundary
from turbo.text import TextEncoder
from turbo.vae import VideoVAE
from turbo.inference import prepare_for_inference
from turbo.long_video import generate_long
from turbo.video import VideoWriter, read_video, write_video

TOP_LEVEL_KEYS = {"model", "mode", "prompts", "prompt_file", "negative_prompt", "seeds", "lora", "sampler", "long",
                  "inference", "video", "fps", "device"}
MODES = ("t2v",)
NOT_YET = ("i2v", "t2i2v")
SAMPLERS = {"teacher": {"steps", "guidance_scale"},
            "consistency": {"steps", "grid_steps", "guidance", "sigma_data", "timestep_scaling"},
            "fixed": {"timesteps"}}


@dataclass
class Pipeline:
    text: TextEncoder
    vae: VideoVAE
    denoiser: Denoiser
    role: Role  # "student" with a LoRA, else "teacher"
    device: torch.device


# --- config checks (before any model is built) --------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; turbo-generate reads {sorted(TOP_LEVEL_KEYS)}")
    if cfg.mode in NOT_YET:
        raise ConfigError(f"mode={cfg.mode} is not implemented yet: turbo-generate supports only mode=t2v for now")
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not a mode; choose t2v ({', '.join(NOT_YET)}: not implemented yet)")
    name = cfg.sampler.get("name")
    if name not in SAMPLERS:
        raise ConfigError(f"sampler.name={name!r} is not a sampler; choose one of {sorted(SAMPLERS)}")
    extra = sorted(set(cfg.sampler[name].keys()) - SAMPLERS[name]) if name in cfg.sampler else []
    if name not in cfg.sampler or extra:
        raise ConfigError(f"sampler.{name} must hold {sorted(SAMPLERS[name])}"
                          + (f"; unknown keys {extra}" if extra else f", found no sampler.{name}"))
    if name == "fixed" and not list(cfg.sampler.fixed.timesteps):
        raise ConfigError("sampler.fixed.timesteps must list at least one timestep, e.g. [999, 749, 499, 249]")
    if not seeds_of(cfg):
        raise ConfigError("seeds must list at least one seed, e.g. seeds=[0,1]")
    if cfg.lora is not None:
        folder = Path(str(cfg.lora))
        if not folder.is_dir():
            raise FileNotFoundError(f"lora={folder}: no such folder; expected a student folder written by "
                                    f"turbo-train (<run>/student) holding {WEIGHTS}")
        if not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"lora={folder}: expected {WEIGHTS} inside it, found none")


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
def lora_config(folder: Path) -> dict:
    """The peft LoRA config ``turbo.lora.save_lora`` wrote into the weights' safetensors metadata."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    path = folder / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file
        raise ValueError(f"{path}: cannot be read as a safetensors file ({e})") from None
    if LORA_ADAPTER_METADATA_KEY not in meta:
        raise ValueError(f"{path}: has no LoRA config in its metadata ({LORA_ADAPTER_METADATA_KEY!r}); "
                         f"turbo-generate reads LoRAs written by turbo-train")
    config = json.loads(meta[LORA_ADAPTER_METADATA_KEY])
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) is None]
    if missing:
        raise ValueError(f"{path}: its LoRA config lacks {missing}")
    return config


def add_student(denoiser: Denoiser, folder: Path) -> None:
    """Add the "student" adapter shaped as the LoRA file says, then load its weights. Any LoRA that
    does not fit this backbone is one ValueError naming the file."""
    path = folder / WEIGHTS
    config = lora_config(folder)
    with safe_open(str(path), framework="pt") as f:
        found = sorted({k.split(".", 1)[0] for k in f.keys()})
    want = denoiser.spec.lora_prefix
    if want not in found:
        raise ValueError(f"{path}: is a LoRA of another model: its keys start with {found}, but this "
                         f"{type(denoiser.backbone).__name__} (model.family={denoiser.family}) needs {want!r}.* keys")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    try:
        denoiser.add_adapter("student", rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                             target_modules=targets, guidance_embedding=(folder / GUIDANCE).is_file())
    except ValueError as e:
        raise ValueError(f"{path}: its target modules {targets} do not fit this "
                         f"{type(denoiser.backbone).__name__} (is it a LoRA of another model?): {e}") from None
    try:
        load_lora(denoiser, "student", folder)
    except RuntimeError as e:  # shape mismatches from load_state_dict
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise ValueError(f"{path}: does not fit this {type(denoiser.backbone).__name__} "
                         f"(is it a LoRA of another model?): {details[0] if details else e}"
                         + (f" (and {len(details) - 1} more)" if len(details) > 1 else "")) from None


def load(cfg: DictConfig) -> Pipeline:
    check_config(cfg)
    device = resolve_device(str(cfg.device))
    m = cfg.model
    text = build(m.text_encoder, "model.text_encoder").to(device)
    vae = build(m.vae, "model.vae").to(device)
    vae.check_video_size(cfg.video.num_frames, cfg.video.height, cfg.video.width, key="video")
    denoiser = Denoiser(build(m.backbone, "model.backbone"), build(m.schedule, "model.schedule"), m.family,
                        m.get("time_embedding_module"))
    role: Role = "teacher"
    if cfg.lora is not None:
        add_student(denoiser, Path(str(cfg.lora)))
        role = "student"
    denoiser.to(device).eval()
    inf = cfg.inference
    if inf.merge_lora and cfg.lora is None:
        raise ConfigError("inference.merge_lora=true needs a student: set lora=<run>/student")
    prepare_for_inference(denoiser, merge="student" if inf.merge_lora else None, quantize=inf.quantize,
                          attention_backend=inf.attention_backend, compile=bool(inf.compile))
    return Pipeline(text, vae, denoiser, role, device)


# --- sampling -----------------------------------------------------------------------------------
def sampler_steps(cfg: DictConfig) -> int:
    s = cfg.sampler
    return len(s.fixed.timesteps) if s.name == "fixed" else int(s[s.name].steps)


@torch.no_grad()
def sample_latents(pipe: Pipeline, cfg: DictConfig, prompt: str, seed: int) -> Tensor:
    """One video's latents (1,C,f,h,w) for ``prompt`` with noise from ``seed``."""
    v, s = cfg.video, cfg.sampler
    shape = pipe.vae.latent_shape(v.num_frames, v.height, v.width)
    cond = pipe.text([prompt]).to(pipe.device)
    gen = torch.Generator().manual_seed(int(seed))
    if s.name == "teacher":
        uncond = pipe.text([cfg.negative_prompt]).to(pipe.device)
        return sample_teacher(pipe.denoiser, cond, uncond, shape, int(s.teacher.steps),
                              float(s.teacher.guidance_scale), gen, role=pipe.role)
    if s.name == "consistency":
        c = s.consistency
        return sample_consistency(pipe.denoiser, cond, shape, int(c.steps), gen, grid_steps=int(c.grid_steps),
                                  guidance=None if c.guidance is None else float(c.guidance),
                                  boundary=ConsistencyBoundary(float(c.sigma_data), float(c.timestep_scaling)),
                                  role=pipe.role)
    return sample_fixed_steps(pipe.denoiser, cond, shape, [int(t) for t in s.fixed.timesteps], gen, role=pipe.role)


def write_long(pipe: Pipeline, cfg: DictConfig, prompt: str, seed: int, path: Path) -> Path:
    """A ``long.windows``-window video streamed to ``path`` (turbo/long_video.py)."""
    v, s, lg = cfg.video, cfg.sampler, cfg.long
    settings: dict = {"timesteps": tuple(int(t) for t in s.fixed.timesteps)} if s.name == "fixed" else \
        {"steps": int(s[s.name].steps)}
    if s.name == "teacher":
        settings["guidance_scale"] = float(s.teacher.guidance_scale)
    if s.name == "consistency":
        c = s.consistency
        settings.update(grid_steps=int(c.grid_steps), guidance=None if c.guidance is None else float(c.guidance),
                        boundary=ConsistencyBoundary(float(c.sigma_data), float(c.timestep_scaling)))
    cond = pipe.text([prompt]).to(pipe.device)
    uncond = pipe.text([cfg.negative_prompt]).to(pipe.device) if s.name == "teacher" else None
    with VideoWriter(path, fps=cfg.fps) as writer:
        generate_long(pipe.denoiser, pipe.vae, cond, uncond, window_latent_frames=pipe.vae.latent_frames(v.num_frames),
                      overlap=int(lg.overlap), num_windows=int(lg.windows), sampler=s.name,
                      generator=torch.Generator().manual_seed(int(seed)), writer=writer,
                      height=int(v.height), width=int(v.width), role=pipe.role, **settings)
    return Path(path)


def slug(prompt: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit].rstrip("_") or "prompt"


def generate(cfg: DictConfig, out_dir: str | Path) -> list[Path]:
    """Write one mp4 per (prompt, seed), ``grid.png`` and ``prompts.jsonl`` to ``out_dir``; return the mp4s."""
    from torchvision.utils import make_grid, save_image

    check_config(cfg)
    prompts, seeds = prompts_of(cfg), seeds_of(cfg)
    pipe = load(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    paths, firsts, rows = [], [], []
    for i, (prompt, seed) in enumerate(tqdm(jobs, desc="generate", unit="video")):
        t0 = time.perf_counter()
        name = out / f"{i:03d}_{seed}_{slug(prompt)}.mp4"
        if cfg.long.windows > 1:
            path, video = write_long(pipe, cfg, prompt, seed, name), None
        else:
            latents = sample_latents(pipe, cfg, prompt, seed)
            video = pipe.vae.decode(latents)[0].float().cpu()  # F,3,H,W in [0,1]
            path = write_video(name, video, fps=cfg.fps)
        seconds = time.perf_counter() - t0
        if video is None:
            video, _ = read_video(path, num_frames=1)
        paths.append(path)
        firsts.append(video[0])
        rows.append({"file": path.name, "prompt": prompt, "seed": seed, "sampler": cfg.sampler.name,
                     "steps": sampler_steps(cfg), "lora": None if cfg.lora is None else str(cfg.lora),
                     "seconds": round(seconds, 4)})
    save_image(make_grid(torch.stack(firsts), nrow=len(seeds), padding=2, pad_value=1.0), out / "grid.png")
    (out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@hydra.main(config_path="pkg://conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        paths = generate(cfg, out)
    except (ValueError, FileNotFoundError) as e:  # bad input (ConfigError is a ValueError): one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"turbo-generate: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{len(paths)} videos in {out}")


if __name__ == "__main__":
    main()
