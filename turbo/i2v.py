"""Image conditioning for image-to-video (I2V) backbones.

An I2V backbone sees its first frame in up to two ways (Wan2.1 I2V, Magic 1-For-1):

1. ``image_latents`` B,C',f,h,w, concatenated to the noisy latents on channels by
   ``turbo.families.with_image_latents`` (so the backbone takes C + C' input channels): the first
   frame's VAE latent padded over latent time, plus ``mask_channels`` mask channels that are 1 on
   the conditioned (first) latent frame and 0 elsewhere;
2. ``image_embeds`` B,N,E image tokens from an image encoder, where the family has them (Wan2.1
   I2V: the penultimate hidden states of a CLIP ViT, its ``encoder_hidden_states_image``).

Two layouts of (1) exist, both options of ``ImageConditioner``:

- Wan2.1 I2V, as diffusers' ``WanImageToVideoPipeline.prepare_latents`` builds it:
  ``order="mask_first"``, ``pad="pixels"``, ``mask_channels`` = the VAE's temporal factor (4):
  ``[mask, VAE(first frame, then F-1 gray frames)]``. Its padding is in pixel space: the frames
  after the first are gray (0 in [-1, 1]) and encoded with it, so their latents are not zero.
- Magic 1-For-1: ``order="latent_first"``, ``pad="latents"``, ``mask_channels=1``:
  ``[first-frame latent zero-padded over latent time, mask]``.

The first frame's latent is the same either way: a causal VAE (Wan's) encodes latent frame 0 from
pixel frame 0 alone, so for training it is ``latents[:, :, :1]`` of the clean video latents
(tests/turbo/test_i2v.py checks this on the tiny Wan VAE). CFG's unconditional half keeps the
image (Wan's pipeline passes the same condition and image tokens to both halves): ``apply``
conditions cond and uncond alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from turbo.config import ConfigError, build
from turbo.seeding import seeded
from turbo.text import TextCond
from turbo.vae import VideoVAE
from turbo.video import resize_cover_crop

I2V_KEYS = {"mask_channels", "order", "pad", "image_encoder"}
ORDERS = ("mask_first", "latent_first")
PADS = ("pixels", "latents")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- image tokens ---------------------------------------------------------------------------------
class ClipImageEncoder(nn.Module):
    """A frozen ``CLIPVisionModel``: images B,3,H,W in [0, 1] -> image tokens B,N,E, the penultimate
    hidden states (``hidden_states[-2]``, as ``WanImageToVideoPipeline.encode_image``; N = patches + 1).
    Preprocessing is ``CLIPImageProcessor``'s, in torch: resize the short side to ``image_size``
    (bicubic, antialiased; PIL's resampling differs in the last bits), center crop, normalise."""

    def __init__(self, model: nn.Module, image_size: int | None = None,
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(image_size or model.config.image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ClipImageEncoder":
        return super().train(False)  # always frozen

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def preprocess(self, images: Tensor) -> Tensor:
        """B,3,H,W in [0, 1] -> B,3,S,S normalised pixels (S = ``image_size``)."""
        x = resize_cover_crop(images.float(), self.image_size, self.image_size, mode="bicubic")
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the image encoder takes images B,3,H,W in [0, 1], found {tuple(images.shape)}")
        pixels = self.preprocess(images).to(self.mean.device, next(self.model.parameters()).dtype)
        return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


def tiny_clip_vision(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, image_size: int = 32,
                     patch_size: int = 8) -> ClipImageEncoder:
    """A seeded tiny ``CLIPVisionModel`` (Wan2.1 I2V's image-encoder class): (image_size /
    patch_size)^2 + 1 tokens of ``hidden_size`` (32 x 32 images, patch 8: 17 tokens of 32)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    return ClipImageEncoder(seeded(seed, lambda: CLIPVisionModel(config)))


def load_image_encoder(path: str, key: str = "model.i2v.image_encoder.path") -> ClipImageEncoder:
    """The CLIP image encoder of a local diffusers-format I2V folder (``image_encoder/`` with
    ``image_processor/preprocessor_config.json`` for its size and normalisation, as
    Wan-AI/Wan2.1-I2V-14B-480P-Diffusers ships it)."""
    from transformers import CLIPVisionModel

    root = Path(path).expanduser()
    if not (root / "image_encoder" / "config.json").is_file():
        raise FileNotFoundError(f"{key}={str(path)!r}: expected image_encoder/config.json inside a local "
                                f"diffusers-format I2V folder, found none")
    size, mean, std = None, CLIP_MEAN, CLIP_STD
    proc = root / "image_processor" / "preprocessor_config.json"
    if proc.is_file():
        p = json.loads(proc.read_text())
        crop = p.get("crop_size")
        size = crop.get("height") if isinstance(crop, dict) else crop
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    return ClipImageEncoder(CLIPVisionModel.from_pretrained(root, subfolder="image_encoder"), size, mean, std)


# --- images ----------------------------------------------------------------------------------------
def load_image(path: str | Path, height: int, width: int, key: str = "image") -> Tensor:
    """An image file -> 3,height,width float32 in [0, 1] (RGB, resized to cover and centre-cropped)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such file; expected an image (png, jpg, ...)")
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{key}={path}: cannot be read as an image ({e})") from None
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    x = x.permute(2, 0, 1).float().div(255).unsqueeze(0)
    return resize_cover_crop(x, height, width)[0]


# --- the conditioner -----------------------------------------------------------------------------
class ImageConditioner(nn.Module):
    """First frame -> the I2V conditioning in ``TextCond`` (``image_latents``, ``image_embeds``).

    ``mask_channels``: mask channels per latent frame (Wan: the VAE's temporal factor, 4; Magic
    1-For-1: 1); ``order``: "mask_first" (Wan) or "latent_first" (Magic 1-For-1); ``pad``: "pixels"
    (Wan: gray frames after the first, encoded with it) or "latents" (zeros after the first latent
    frame); ``image_encoder``: image tokens, or None for families without them.
    """

    def __init__(self, vae: VideoVAE, mask_channels: int = 4, order: str = "mask_first", pad: str = "pixels",
                 image_encoder: ClipImageEncoder | None = None):
        super().__init__()
        if int(mask_channels) < 1:
            raise ConfigError(f"model.i2v.mask_channels must be >= 1, found {mask_channels}")
        if order not in ORDERS:
            raise ConfigError(f"model.i2v.order must be one of {list(ORDERS)}, found {order!r}")
        if pad not in PADS:
            raise ConfigError(f"model.i2v.pad must be one of {list(PADS)}, found {pad!r}")
        self.vae = vae
        self.mask_channels = int(mask_channels)
        self.order = order
        self.pad = pad
        self.image_encoder = image_encoder

    @property
    def channels(self) -> int:
        """C' = channels of ``image_latents`` (the backbone takes latent channels + C')."""
        return self.vae.latent_channels + self.mask_channels

    def check_backbone(self, backbone: nn.Module, key: str = "model.backbone") -> None:
        """Raise when the backbone's input channels or image-token width do not fit this conditioning."""
        cfg = getattr(backbone, "config", None)
        c = self.vae.latent_channels
        found = getattr(cfg, "in_channels", None)
        if found is not None and found != c + self.channels:
            raise ConfigError(f"model.i2v makes {c} + {c} + {self.mask_channels} = {c + self.channels} input channels "
                              f"(noisy latents + first-frame latents + model.i2v.mask_channels), but {key} takes {found}")
        image_dim = getattr(cfg, "image_dim", None)
        if self.image_encoder is None and image_dim is not None:
            raise ConfigError(f"{key} takes image tokens of width {image_dim} (image_dim), "
                              f"but model.i2v.image_encoder is null")
        if self.image_encoder is not None and image_dim != self.image_encoder.dim:
            raise ConfigError(f"model.i2v.image_encoder gives tokens of width {self.image_encoder.dim}, but {key} "
                              f"takes image_dim={image_dim}")

    def mask(self, batch: int, latent_frames: int, latent_hw: tuple[int, int], like: Tensor) -> Tensor:
        """B,mask_channels,f,h,w: 1 on latent frame 0 (the conditioned frame), 0 after it. For Wan this
        is ``prepare_latents``' mask: one channel per pixel frame of a latent frame, all 1 on frame 0."""
        m = torch.zeros(batch, self.mask_channels, latent_frames, *latent_hw, dtype=like.dtype, device=like.device)
        m[:, :, 0] = 1
        return m

    @torch.no_grad()
    def image_latents(self, first_frame: Tensor, num_frames: int, first_latent: Tensor | None = None) -> Tensor:
        """First frames B,3,H,W in [0, 1] -> ``image_latents`` B,C',f,h,w for a ``num_frames``-frame
        video. ``first_latent`` (B,C,1,h,w, e.g. ``latents[:, :, :1]`` of the clean video) saves an
        encode when ``pad="latents"``."""
        if first_frame.ndim != 4 or first_frame.shape[1] != 3:
            raise ValueError(f"first frames must be B,3,H,W in [0, 1], found {tuple(first_frame.shape)}")
        f = self.vae.latent_frames(num_frames)
        if self.pad == "pixels":
            video = first_frame[:, None].expand(-1, num_frames, -1, -1, -1).clone()
            video[:, 1:] = 0.5  # gray: 0 in the VAE's [-1, 1]
            latent = self.vae.encode(video)
        else:
            first = self.vae.encode(first_frame[:, None]) if first_latent is None else first_latent
            latent = torch.cat([first, first.new_zeros(*first.shape[:2], f - 1, *first.shape[3:])], dim=2)
        mask = self.mask(latent.shape[0], f, tuple(latent.shape[3:]), latent)
        return torch.cat([mask, latent] if self.order == "mask_first" else [latent, mask], dim=1)

    def image_embeds(self, first_frame: Tensor) -> Tensor | None:
        """Image tokens B,N,E of the first frames, or None without an image encoder."""
        return None if self.image_encoder is None else self.image_encoder(first_frame)

    def apply(self, conds: list[TextCond], first_frame: Tensor, num_frames: int,
              first_latent: Tensor | None = None) -> list[TextCond]:
        """Each of ``conds`` (the prompts' and the negative / empty prompt's, each of batch B)
        with the image conditioning of ``first_frame`` (B,3,H,W in [0, 1]) set."""
        latents = self.image_latents(first_frame, num_frames, first_latent)
        embeds = self.image_embeds(first_frame)
        for c in conds:
            if len(c) != first_frame.shape[0]:
                raise ValueError(f"{first_frame.shape[0]} first frames for a condition of batch {len(c)}")
        return [c.replace(image_latents=latents.to(c.embeds.device),
                          image_embeds=None if embeds is None else embeds.to(c.embeds.device)) for c in conds]


def build_i2v(node: DictConfig | None, vae: VideoVAE, backbone: nn.Module | None = None,
              key: str = "model.i2v") -> ImageConditioner | None:
    """``model.i2v`` -> an ``ImageConditioner`` (None for a model config without an i2v node).
    Keys: ``mask_channels``, ``order``, ``pad``, ``image_encoder`` (null or a node with a _target_)."""
    if node is None:
        return None
    unknown = sorted(set(node.keys()) - I2V_KEYS)
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in {key}; expected {sorted(I2V_KEYS)}")
    enc = node.get("image_encoder")
    encoder = None if enc is None else build(enc, f"{key}.image_encoder")
    if encoder is not None and not isinstance(encoder, ClipImageEncoder):
        raise ConfigError(f"{key}.image_encoder must build a turbo.i2v.ClipImageEncoder, found {type(encoder).__name__}")
    cond = ImageConditioner(vae, mask_channels=node.get("mask_channels", vae.temporal),
                            order=node.get("order", "mask_first"), pad=node.get("pad", "pixels"), image_encoder=encoder)
    if backbone is not None:
        cond.check_backbone(backbone)
    tensors = [*vae.parameters(), *vae.buffers()]  # a parameter-free VAE (the toy PixelVAE) has buffers only
    return cond.to(tensors[0].device) if tensors else cond


__all__ = ["ClipImageEncoder", "ImageConditioner", "build_i2v", "load_image", "load_image_encoder",
           "tiny_clip_vision"]
