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

from turbo.families import get_family
from turbo.text import TextEncoder
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
    root, config = _component(path, subfolder, key)
    found = config.get("_class_name")
    if found != expected:
        raise ValueError(f"{key}={str(path)!r}: model.family={family!r} expects {subfolder}/ to hold a "
                         f"{expected}, found {found}")
    return getattr(diffusers, expected).from_pretrained(root, subfolder=subfolder)


def load_vae(path: str, key: str = "model.path") -> VideoVAE:
    root, config = _component(path, "vae", key)
    cls = config.get("_class_name")
    if cls not in ("AutoencoderKLWan", "AutoencoderKL"):
        raise ValueError(f"{key}={str(path)!r}: vae/ holds {cls}, expected AutoencoderKLWan or AutoencoderKL")
    return VideoVAE(getattr(diffusers, cls).from_pretrained(root, subfolder="vae"))


def load_text_encoder(path: str, max_length: int = 512, key: str = "model.path") -> TextEncoder:
    root, config = _component(path, "text_encoder", key)
    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise ValueError(f"{key}={str(path)!r}: text_encoder/config.json names no known transformers "
                         f"architecture (found {archs})")
    tokenizer = transformers.AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
    return TextEncoder(cls.from_pretrained(root, subfolder="text_encoder"), tokenizer, max_length)
