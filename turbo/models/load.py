"""Loading real families from local diffusers-format folders (never from a hub).

A diffusers folder holds one sub-folder per component (``transformer/`` or ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``), each with a ``config.json`` naming its class. We read that
name before loading so a folder of the wrong family fails with one clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import transformers

from turbo.families import FAMILIES, get_family
from turbo.text import (CLIPTextEncoder, HunyuanVideoTextEncoder, SD3TextEncoder, SDXLTextEncoder, TextEncoder)
from turbo.vae import VideoVAE


def _component(path: str | Path, subfolder: str, key: str) -> tuple[Path, dict]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{key}={str(path)!r}: expected a local diffusers-format model folder, "
                                f"found no such directory")
    config = root / subfolder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{key}={str(path)!r}: expected {subfolder}/config.json inside it, found none")
    return root, json.loads(config.read_text())


def load_backbone(path: str, family: str, key: str = "model.path"):
    """The denoising network of ``family`` from ``path/<transformer|unet>``."""
    spec = get_family(family)
    subfolder, expected = spec.subfolder, spec.backbone_class
    root = Path(path).expanduser()
    if root.is_dir() and not (root / subfolder / "config.json").is_file():
        # a folder of another family keeps its backbone under the other name (unet/ vs transformer/)
        for other in sorted({f.subfolder for f in FAMILIES.values()} - {subfolder}):
            if (root / other / "config.json").is_file():
                found = json.loads((root / other / "config.json").read_text()).get("_class_name")
                raise ValueError(f"{key}={str(path)!r}: model.family={family!r} expects {subfolder}/ to hold a "
                                 f"{expected}, found {other}/ holding a {found}")
    root, config = _component(path, subfolder, key)
    found = config.get("_class_name")
    if found != expected:
        raise ValueError(f"{key}={str(path)!r}: model.family={family!r} expects {subfolder}/ to hold a "
                         f"{expected}, found {found}")
    return getattr(diffusers, expected).from_pretrained(root, subfolder=subfolder)


VAE_CLASSES = ("AutoencoderKLWan", "AutoencoderKLHunyuanVideo", "AutoencoderKL")


def load_vae(path: str, key: str = "model.path") -> VideoVAE:
    """The VAE from ``path/vae``: Wan's, HunyuanVideo's, or an SD-style ``AutoencoderKL`` (its
    ``scaling_factor`` and ``shift_factor`` come from its config)."""
    root, config = _component(path, "vae", key)
    cls = config.get("_class_name")
    if cls not in VAE_CLASSES:
        raise ValueError(f"{key}={str(path)!r}: vae/ holds {cls}, expected one of {', '.join(VAE_CLASSES)}")
    return VideoVAE(getattr(diffusers, cls).from_pretrained(root, subfolder="vae"))


_CLIP, _CLIP_PROJ = ("CLIPTextModel",), ("CLIPTextModelWithProjection",)
# text-encoder kind -> (component sub-folder, the transformers classes it may hold) in order; each
# text_encoder<_n> has its tokenizer<_n>. None: any class (the T5 kind also serves the toy world).
TEXT_ENCODER_KINDS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "t5": (("text_encoder", None),),                                                  # Wan (UMT5)
    "clip": (("text_encoder", _CLIP),),                                               # SD 1.5, ModelScope
    "sdxl": (("text_encoder", _CLIP), ("text_encoder_2", _CLIP_PROJ)),                # CLIP-L, CLIP-G
    "sd3": (("text_encoder", _CLIP_PROJ), ("text_encoder_2", _CLIP_PROJ),
            ("text_encoder_3", ("T5EncoderModel",))),                                 # CLIP-L, CLIP-G, T5-XXL
    "hunyuan": (("text_encoder", ("LlamaModel", "LlavaForConditionalGeneration")),
                ("text_encoder_2", _CLIP)),                                           # LLaMA / LLaVA, CLIP-L
}


ENCODER_CLASSES = {"t5": TextEncoder, "clip": CLIPTextEncoder, "sdxl": SDXLTextEncoder, "sd3": SD3TextEncoder,
                   "hunyuan": HunyuanVideoTextEncoder}


def _text_model(root: Path, subfolder: str, allowed: tuple[str, ...] | None, path: str, key: str, kind: str):
    _, config = _component(root, subfolder, key)
    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise ValueError(f"{key}={str(path)!r}: {subfolder}/config.json names no known transformers "
                         f"architecture (found {archs})")
    if allowed is not None and archs[0] not in allowed:
        raise ValueError(f"{key}={str(path)!r}: model.text_encoder.kind={kind!r} expects {subfolder}/ to hold a "
                         f"{' or '.join(allowed)}, found {archs[0]}")
    tokenizer_folder = subfolder.replace("text_encoder", "tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(root, subfolder=tokenizer_folder)
    return cls.from_pretrained(root, subfolder=subfolder), tokenizer


def load_text_encoder(path: str, max_length: int = 512, key: str = "model.path", kind: str = "t5",
                      **options) -> TextEncoder:
    """The frozen text encoder(s) of a diffusers folder, encoding prompts as the family's pipeline
    does (``kind``: see ``TEXT_ENCODER_KINDS``). ``max_length``: tokens of the T5 / LLaMA sequence
    (CLIP always takes 77). ``options`` go to the encoder class (SDXL: ``zero_empty_prompt``;
    HunyuanVideo: ``template``, ``crop_start``, ``skip_layers``)."""
    if kind not in TEXT_ENCODER_KINDS:
        raise ValueError(f"model.text_encoder.kind must be one of {sorted(TEXT_ENCODER_KINDS)}, found {kind!r}")
    root = Path(path).expanduser()
    parts = [_text_model(root, sub, allowed, path, key, kind) for sub, allowed in TEXT_ENCODER_KINDS[kind]]
    flat = [x for part in parts for x in part]
    if kind == "sdxl" and "zero_empty_prompt" not in options:  # the pipeline's own setting, in model_index.json
        index = root / "model_index.json"
        force = json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True) if index.is_file() else True
        options["zero_empty_prompt"] = bool(force)
    return ENCODER_CLASSES[kind](*flat, max_length, **options)
