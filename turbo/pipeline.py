"""Stages and the factored pipeline (Magic 1-For-1): text -> first frame -> video.

A ``Stage`` is one model ready to sample: text encoder, VAE, the Denoiser in a role (the teacher,
or a LoRA student loaded from a turbo-train run), a ``Sampler``, and, for an image-to-video model,
its ``ImageConditioner``. Text-to-video is one stage; the factored pipeline is two:

    text --(T2I stage: any model sampling a one-frame video)--> first frame B,3,H,W
         --(I2V stage: the first frame conditions it, turbo.i2v)--> video B,F,3,H,W in [0, 1]

Either stage can be a teacher or a student with any step count and any sampler. ``t2i2v`` returns
the composed video as a tensor, so reward models can score the factored pipeline's output as they
score a T2V model's (it samples without gradients).

Seeds: ``t2i2v(..., seed)`` draws the video stage's noise from a generator seeded by ``seed``
(exactly as mode=i2v does from a given image) and the image stage's from one seeded by
``seed + IMAGE_SEED_OFFSET``, so the two stages never share noise.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from torch import Tensor

from turbo.config import ConfigError, build, missing_keys
from turbo.denoiser import Denoiser, Role
from turbo.i2v import ImageConditioner, build_i2v
from turbo.inference import prepare_for_inference
from turbo.lora import GUIDANCE, HAS_GUIDANCE, MODEL_NAME, WEIGHTS, check_lora_tensors, load_lora
from turbo.sampling import Sampler, SamplerError
from turbo.text import TextCond, TextEncoder
from turbo.vae import VideoVAE

IMAGE_SEED_OFFSET = 1_000_003
SAMPLER_NAMES = ("auto", "teacher")


def sampler_from_config(node: DictConfig, lora: str | None, key: str = "sampler") -> Sampler:
    """The ``sampler`` node of turbo-generate / turbo-eval -> a ``Sampler``. ``auto``: a student
    (``lora`` set) samples as its run wrote in ``<lora>/sampler.json``, a teacher with
    ``<key>.teacher``; ``teacher``: CFG with ``<key>.teacher`` even for a student. ``<key>.steps`` and
    ``<key>.guidance`` override the student's own step count and w. Errors name the key."""
    name = node.name
    if name not in SAMPLER_NAMES:
        raise ConfigError(f"{key}.name={name!r}: choose auto (a student's own sampler.json, else the teacher "
                          f"sampler) or teacher")
    if name == "auto" and lora is not None:
        sampler = Sampler.load(str(lora), key=key.replace("sampler", "lora"))
        return sampler.with_steps(node.steps, node.guidance)
    for override in ("steps", "guidance"):
        if node.get(override) is not None:
            raise ConfigError(f"{key}.{override}={node.get(override)} overrides a student's own sampler "
                              f"(sampler.json); the teacher sampler takes {key}.teacher.steps / guidance_scale")
    t = node.teacher
    try:
        return Sampler("teacher", steps=int(t.steps), guidance_scale=float(t.guidance_scale), grid=str(t.grid))
    except SamplerError as e:
        raise ConfigError(f"{key}.teacher.{e}") from None


# --- a stage --------------------------------------------------------------------------------------
@dataclass
class Stage:
    text: TextEncoder
    vae: VideoVAE
    denoiser: Denoiser
    role: Role  # "student" with a LoRA, else "teacher"
    device: torch.device
    sampler: Sampler
    i2v: ImageConditioner | None = None  # set for image-to-video models (model.i2v)
    key: str = "model"                   # the config key of the stage's model, for errors
    name: str | None = None              # the model config's name, and the student folder: for records
    lora: str | None = None

    def record(self) -> dict:
        """What sampled a video, as turbo-generate's prompts.jsonl and turbo-eval's manifest keep it."""
        return {"model": self.name, "lora": self.lora, "sampler": self.sampler.to_dict(), "steps": self.sampler.num_steps}

    def conditions(self, prompts: list[str], negative_prompt: str, num_frames: int,
                   first_frame: Tensor | None = None) -> tuple[TextCond, TextCond]:
        """(cond, uncond) of the prompts and of ``negative_prompt``; an I2V stage needs
        ``first_frame`` (B,3,H,W in [0, 1]), which then conditions both."""
        cond = self.text(list(prompts)).to(self.device)
        uncond = self.text([negative_prompt] * len(prompts)).to(self.device)
        if self.i2v is None:
            if first_frame is not None:
                raise ValueError(f"{self.key} is a text-to-video model (it has no {self.key}.i2v node): "
                                 f"it takes no first frame")
            return cond, uncond
        if first_frame is None:
            raise ValueError(f"{self.key} is an image-to-video model ({self.key}.i2v): it needs a first frame")
        return tuple(self.i2v.apply([cond, uncond], first_frame.to(self.device), num_frames))

    @torch.no_grad()
    def latents(self, prompts: list[str], num_frames: int, height: int, width: int, generator: torch.Generator,
                negative_prompt: str = "", first_frame: Tensor | None = None) -> Tensor:
        """Latents B,C,f,h,w of ``num_frames``-frame videos (B = len(prompts)), noise from ``generator``."""
        cond, uncond = self.conditions(prompts, negative_prompt, num_frames, first_frame)
        shape = self.vae.latent_shape(num_frames, height, width)
        return self.sampler(self.denoiser, cond, uncond, shape, generator, self.role)

    @torch.no_grad()
    def video(self, prompts: list[str], num_frames: int, height: int, width: int, generator: torch.Generator,
              negative_prompt: str = "", first_frame: Tensor | None = None) -> Tensor:
        """Decoded videos B,F,3,H,W float in [0, 1]."""
        latents = self.latents(prompts, num_frames, height, width, generator, negative_prompt, first_frame)
        return self.vae.decode(latents).float()


@torch.no_grad()
def first_frames(image_stage: Stage, prompts: list[str], height: int, width: int, seed: int,
                 negative_prompt: str = "") -> Tensor:
    """The T2I stage: one-frame videos -> first frames B,3,H,W in [0, 1] (noise from ``seed +
    IMAGE_SEED_OFFSET``)."""
    gen = torch.Generator().manual_seed(int(seed) + IMAGE_SEED_OFFSET)
    return image_stage.video(prompts, 1, height, width, gen, negative_prompt)[:, 0]


@torch.no_grad()
def t2i2v(image_stage: Stage, video_stage: Stage, prompts: list[str], seed: int, num_frames: int, height: int,
            width: int, negative_prompt: str = "") -> Tensor:
    """Text -> first frame (``image_stage``) -> video (``video_stage``, an I2V model): the composed
    videos B,F,3,H,W float in [0, 1], B = len(prompts)."""
    if video_stage.i2v is None:
        raise ValueError(f"the video stage ({video_stage.key}) must be an image-to-video model with a "
                         f"{video_stage.key}.i2v node, found a text-to-video model")
    if image_stage.i2v is not None:
        raise ValueError(f"the image stage ({image_stage.key}) must be a text-to-image (or text-to-video) model, "
                         f"found an image-to-video model ({image_stage.key}.i2v)")
    frame = first_frames(image_stage, prompts, height, width, seed, negative_prompt)
    return video_stage.video(prompts, num_frames, height, width, torch.Generator().manual_seed(int(seed)),
                             negative_prompt, first_frame=frame)


# --- loading --------------------------------------------------------------------------------------
def lora_metadata(folder: Path) -> dict[str, str]:
    """The safetensors metadata of ``folder``'s LoRA file; a file that is not safetensors is one
    ValueError naming it."""
    path = Path(folder) / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # not a safetensors file
        raise ValueError(f"{path}: cannot be read as a safetensors file ({e})") from None


def lora_config(folder: Path) -> dict:
    """The peft LoRA config ``turbo.lora.save_lora`` wrote into the weights' safetensors metadata."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    path = folder / WEIGHTS
    meta = lora_metadata(folder)
    if LORA_ADAPTER_METADATA_KEY not in meta:
        raise ValueError(f"{path}: has no LoRA config in its metadata ({LORA_ADAPTER_METADATA_KEY!r}); "
                         f"turbo-generate reads LoRAs written by turbo-train")
    config = json.loads(meta[LORA_ADAPTER_METADATA_KEY])
    if "r" not in config:  # diffusers' pipeline form: keys carry the component prefix ("transformer.r")
        prefixes = {k.split(".", 1)[0] for k in config if "." in k}
        if len(prefixes) == 1:
            config = {k.split(".", 1)[1]: v for k, v in config.items() if "." in k}
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) is None]
    if missing:
        raise ValueError(f"{path}: its LoRA config lacks {missing}")
    return config


def check_lora_folder(lora: str | None, key: str = "lora") -> None:
    if lora is None:
        return
    folder = Path(str(lora))
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}={folder}: no such folder; expected a student folder written by "
                                f"turbo-train (<run>/student) holding {WEIGHTS}")
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{key}={folder}: expected {WEIGHTS} inside it, found none")


def add_student(denoiser: Denoiser, folder: Path) -> None:
    """Add the "student" adapter shaped as the LoRA file says, then load its weights. Any LoRA that
    does not fit this backbone is one ValueError naming the file."""
    path = folder / WEIGHTS
    config = lora_config(folder)
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        guidance = json.loads((f.metadata() or {}).get(HAS_GUIDANCE, "null"))
    found = sorted({k.split(".", 1)[0] for k in shapes})
    want = denoiser.spec.lora_prefix
    if want not in found:
        raise ValueError(f"{path}: is a LoRA of another model: its keys start with {found}, but this "
                         f"{type(denoiser.backbone).__name__} (model.family={denoiser.family}) needs {want!r}.* keys")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    check_lora_tensors(path, {k: v for k, v in shapes.items() if k.startswith(want + ".")}, int(config["r"]), targets)
    if not 0 < float(config["lora_alpha"]) < float("inf"):
        raise ValueError(f"{path}: its metadata's lora_alpha={config['lora_alpha']} is not a positive number")
    has_file = (folder / GUIDANCE).is_file()
    if guidance and not has_file:
        raise FileNotFoundError(f"{folder}: this student was trained with a guidance-scale embedding "
                                f"(student.guidance_embedding) but {GUIDANCE} is missing beside {WEIGHTS}; "
                                f"without it the student would sample as another model")
    if guidance is None and not has_file:
        warnings.warn(f"{folder}: no {GUIDANCE} beside {WEIGHTS} and no metadata saying whether it needs one; "
                      f"sampling without a guidance embedding", stacklevel=2)
    try:
        denoiser.add_adapter("student", rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                             target_modules=targets, guidance_embedding=has_file)
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


def rooted(model: DictConfig, key: str) -> DictConfig:
    """``model`` as the ``model`` node of a config of its own, so that a model config placed under
    another key (``image_stage.model``) still resolves its ``${model.path}`` to its own path.
    Mandatory values left unset are reported under ``key``."""
    if key == "model":
        return model
    root = OmegaConf.create({"model": OmegaConf.to_container(model, resolve=False)})
    missing = missing_keys(root, "")
    if missing:
        names = [key + m[len("model"):] if m.startswith("model.") else m for m in missing]
        raise ConfigError(f"{', '.join(names)} must be set (found '???'), e.g. on the command line: {names[0]}=...")
    return root.model


def build_model(model: DictConfig, device: torch.device, *, key: str = "model", text: bool = True
                ) -> tuple[TextEncoder | None, VideoVAE, Denoiser, ImageConditioner | None]:
    """A model config (``key`` names it in errors) -> its text encoder (None when ``text=False``),
    VAE and image conditioner on ``device``, and the Denoiser over its backbone and schedule, left
    on the CPU so that adapters can be added before it moves. The one place a model is assembled:
    turbo-train, turbo-generate and turbo-eval all build through it."""
    m = rooted(model, key)
    encoder = build(m.text_encoder, f"{key}.text_encoder").to(device) if text else None
    vae = build(m.vae, f"{key}.vae").to(device)
    denoiser = Denoiser(build(m.backbone, f"{key}.backbone"), build(m.schedule, f"{key}.schedule"), m.family,
                        m.get("time_embedding_module"))
    return encoder, vae, denoiser, build_i2v(m.get("i2v"), vae, denoiser.backbone, key=f"{key}.i2v")


def lora_model(folder: Path) -> str | None:
    """The name of the model config a turbo-train LoRA was trained on (``model.name``, which
    ``distill.finish.save_student`` writes into its metadata), or None when the file does not say
    (LoRAs from elsewhere, or from runs older than the key)."""
    return lora_metadata(folder).get(MODEL_NAME)


def check_lora_model(model: DictConfig, lora: str | None, key: str = "model", lora_key: str = "lora",
                     strict: bool = False) -> None:
    """A LoRA trained on another model config than ``model`` (by name): a ValueError with ``strict``,
    else a warning (a LoRA may be meant for a renamed or re-quantised copy of its model)."""
    trained_on, name = (None if lora is None else lora_model(Path(str(lora)))), model.get("name")
    if trained_on is None or name is None or trained_on == name:
        return
    message = (f"{lora_key}={lora}: this student was trained on the model named {trained_on!r} (its {WEIGHTS} "
               f"metadata {MODEL_NAME}), but {key} is {name!r}")
    if strict:
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)


def load_stage(model: DictConfig, sampler: Sampler, device: torch.device, *, lora: str | None = None,
               inference: DictConfig | None = None, key: str = "model", lora_key: str = "lora",
               strict_model: bool = False) -> Stage:
    """Build a stage from a model config (``key`` names it in errors), optionally with the student
    LoRA of a turbo-train run (``lora``: its ``student`` folder). ``inference``: turbo.inference
    options (merge_lora merges this stage's LoRA when it has one). A LoRA trained on a model config
    of another name warns, or with ``strict_model`` is refused (``check_lora_model``)."""
    check_lora_folder(lora, lora_key)
    check_lora_model(model, lora, key, lora_key, strict=strict_model)
    text, vae, denoiser, i2v = build_model(model, device, key=key)
    role: Role = "teacher"
    if lora is not None:
        add_student(denoiser, Path(str(lora)))
        role = "student"
    denoiser.to(device).eval()
    if inference is not None:
        prepare_for_inference(denoiser, merge="student" if inference.merge_lora and lora is not None else None,
                              quantize=inference.quantize, attention_backend=inference.attention_backend,
                              compile=bool(inference.compile))
    return Stage(text, vae, denoiser, role, device, sampler, i2v, key, model.get("name"), None if lora is None else str(lora))


__all__ = ["IMAGE_SEED_OFFSET", "Sampler", "Stage", "add_student", "build_model", "check_lora_folder", "check_lora_model", "t2i2v",
           "first_frames", "load_stage", "lora_config", "lora_model", "rooted", "sampler_from_config"]
