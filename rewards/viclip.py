"""ViCLIP (InternVid) video-text reward: our implementation of the architecture.

ViCLIP-L/14 is CLIP ViT-L/14 made temporal: a Conv3d patch embedding with temporal
kernel 1, a learnable temporal position embedding added to every patch of a frame, and
one CLS token that attends over all frames x patches at once; the text side is a CLIP
text transformer with a 32-token context. score = cos(video features, text features).

Module and parameter names reproduce the official ``ViClip-InternVid-10M-FLT.pth``
(state dict under ``['model']``, 447 entries) exactly, as built by InternVid's
``Data/InternVid/viclip/{viclip,viclip_vision,viclip_text}.py``: ``temp``,
``vision_encoder.*`` (conv1, class_embedding, positional_embedding,
temporal_positional_embedding, ln_pre, transformer.resblocks.N.{attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}, ln_post, proj) and
``text_encoder.*`` (token_embedding, positional_embedding, transformer.resblocks.N.*,
ln_final, text_projection). No renames are needed: the residual blocks are open_clip's own
``Transformer`` (CLIP's layout), the embeddings, pooling and projections are written here. The expected layout is written
down in tests/rewards/data/viclip_keys.json. Frames are preprocessed as the reference's
datasets do (squash to 224 x 224, ImageNet mean / std): see rewards.video_text.

Reference behaviour reproduced: QuickGELU in both towers; LayerNorm eps 1e-5 (the text
tower's computed in float32); causal text attention; text features at the EOT token
(the highest id); video tokens ordered patch-major, frame-minor. Departure: weights of a
freshly built model are initialised like OpenAI CLIP, and the temporal embedding
randomly rather than with zeros, so that a tiny untrained model is frame-order aware.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.utils.checkpoint
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import Tensor, nn

from rewards.base import TowerSizes
from rewards.loading import load_checkpoint_into
from rewards.video_text import VideoTextReward
from turbo.seeding import seeded


@dataclass(frozen=True)
class ViCLIPConfig(TowerSizes):
    """Sizes of a ViCLIP model. The defaults (``large()``) are ViCLIP-L/14 (InternVid-10M-FLT): ViT-L/14
    (1024 wide, 24 layers, 16 heads), text 768 x 12, output 768."""

    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 8
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    embed_dim: int = 768  # output of both towers
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 32
    vocab_size: int = 49408  # OpenAI CLIP BPE

    @classmethod
    def base(cls, **changes) -> "ViCLIPConfig":
        """ViCLIP-B/16 (``ViCLIP-B-InternVid-FLT-10M``): ViT-B/16, text 512 x 12, output 512."""
        return cls(**dict(patch_size=16, vision_width=768, vision_layers=12, vision_heads=12, embed_dim=512,
                          text_width=512, text_heads=8) | changes)

    @classmethod
    def tiny(cls, **changes) -> "ViCLIPConfig":
        """A CPU-test size: 32 px, 8 px patches, width 32, 2 layers, 2 heads, output 32."""
        return cls(**dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, embed_dim=32,
                          text_width=32, text_layers=2, text_heads=2) | changes)


SIZES = {"L/14": ViCLIPConfig.large, "B/16": ViCLIPConfig.base, "tiny": ViCLIPConfig.tiny}


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32 whatever the input and weight dtypes (the reference text
    tower's). open_clip's LayerNormFp32 casts only the input, and fails once the reward is cast to half."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = torch.nn.functional.layer_norm(x.to(dtype), self.normalized_shape, self.weight.to(dtype),
                                             self.bias.to(dtype), self.eps)
        return out.to(x.dtype)


def clip_transformer(width: int, layers: int, heads: int, norm: type[nn.LayerNorm] = LayerNorm) -> Transformer:
    """CLIP's pre-norm residual blocks as open_clip builds them (batch-first, QuickGELU, MLP ratio 4):
    the same module and parameter names as the official checkpoint (``resblocks.N.{attn.in_proj_weight,
    attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``)."""
    return Transformer(width, layers, heads, act_layer=QuickGELU, norm_layer=norm, batch_first=True)


class ViCLIPVision(nn.Module):
    """pixels B,3,T,H,W (normalised, T == num_frames) -> B,embed_dim: the CLS token over all space-time tokens."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        width, patch = cfg.vision_width, cfg.patch_size
        self.num_frames = cfg.num_frames
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((cfg.image_size // patch) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.empty(1, cfg.num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = clip_transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.ndim != 5 or pixels.shape[2] != self.num_frames:
            raise ValueError(f"ViCLIPVision: expected pixels B,3,{self.num_frames},H,W, found {tuple(pixels.shape)}")
        x = self.conv1(pixels)  # B,C,T,h,w
        batch, width, frames = x.shape[:3]
        x = x.flatten(3).permute(0, 2, 3, 1)  # B,T,N,C
        x = x + self.positional_embedding[1:].to(x.dtype) + self.temporal_positional_embedding[0, :, None].to(x.dtype)
        x = x.transpose(1, 2).reshape(batch, -1, width)  # patch-major, frame-minor, as the reference
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(batch, 1, width)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class ViCLIPText(nn.Module):
    """tokens B,context_length int64 (OpenAI CLIP BPE, EOT = highest id) -> B,embed_dim."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = clip_transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, norm=FP32LayerNorm)
        self.ln_final = FP32LayerNorm(cfg.text_width)
        # additive causal mask, as open_clip's TextTransformer builds it
        self.register_buffer("causal_mask", torch.full((cfg.context_length,) * 2, float("-inf")).triu_(1),
                             persistent=False)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.causal_mask[: x.shape[1], : x.shape[1]].to(x.dtype)))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection


class ViCLIP(nn.Module):
    """The ViCLIP dual encoder, parameter for parameter the official checkpoint's layout."""

    def __init__(self, config: ViCLIPConfig = ViCLIPConfig()) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = ViCLIPVision(config)
        self.text_encoder = ViCLIPText(config)
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))  # contrastive temperature (training only)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """OpenAI-CLIP-style initialisation (uses the global torch RNG)."""
        for tower, width, layers in (
            (self.vision_encoder, self.config.vision_width, self.config.vision_layers),
            (self.text_encoder, self.config.text_width, self.config.text_layers),
        ):
            attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
            for block in tower.transformer.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.zeros_(block.mlp.c_fc.bias)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
                nn.init.zeros_(block.mlp.c_proj.bias)
        vision, text = self.vision_encoder, self.text_encoder
        scale = self.config.vision_width**-0.5
        nn.init.normal_(vision.class_embedding, std=scale)
        nn.init.normal_(vision.positional_embedding, std=scale)
        nn.init.normal_(vision.temporal_positional_embedding, std=scale)
        nn.init.normal_(vision.proj, std=scale)
        nn.init.kaiming_uniform_(vision.conv1.weight, a=math.sqrt(5))
        nn.init.normal_(text.token_embedding.weight, std=0.02)
        nn.init.normal_(text.positional_embedding, std=0.01)
        nn.init.normal_(text.text_projection, std=self.config.text_width**-0.5)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the vision tower's blocks in backward (the text side never needs gradients)."""
        self.vision_encoder.transformer.grad_checkpointing = enabled

    def encode_video(self, pixels: Tensor) -> Tensor:
        """B,T,3,H,W normalised pixels (T == num_frames) -> B,embed_dim (not normalised)."""
        return self.vision_encoder(pixels.transpose(1, 2))

    def encode_text(self, tokens: Tensor) -> Tensor:
        """B,context_length int64 token ids -> B,embed_dim (not normalised)."""
        return self.text_encoder(tokens)


def tiny_viclip_model(seed: int = 0, **changes) -> ViCLIP:
    """A seeded random :func:`ViCLIPConfig.tiny` model (``changes`` override config fields).

    The global torch RNG is left untouched (the seed is applied inside a forked RNG).
    """
    config = ViCLIPConfig.tiny(**changes)
    return seeded(seed, lambda: ViCLIP(config))


def _tokenizer(config: ViCLIPConfig, tokenizer_path: str | os.PathLike | None, name: str) -> SimpleTokenizer:
    # ViCLIP's tokenizer is OpenAI CLIP's BPE (bpe_simple_vocab_16e6), which open_clip ships:
    # byte-identical to InternVid's copy, same cleaning (ftfy, whitespace, lower case) and the same
    # truncation (keep context_length tokens, the last one EOT).
    if tokenizer_path is None:
        return SimpleTokenizer(context_length=config.context_length)
    if not Path(tokenizer_path).is_file():
        raise FileNotFoundError(
            f"reward '{name}': tokenizer BPE file {str(tokenizer_path)!r} not found; set "
            f"reward.{name}.model.tokenizer_path to a local bpe_simple_vocab_16e6.txt.gz, or null for open_clip's copy"
        )
    return SimpleTokenizer(bpe_path=str(tokenizer_path), context_length=config.context_length)


def load_viclip(checkpoint: str | os.PathLike, config: ViCLIPConfig, *, name: str = "viclip",
                allow_pickle: bool = False) -> ViCLIP:
    """A :class:`ViCLIP` of ``config`` holding the weights of a local official-format checkpoint
    (torch pickle or safetensors; the state dict under ``['model']`` as in
    ``ViClip-InternVid-10M-FLT.pth``, or at the top level). Every key must match, or
    :class:`rewards.loading.CheckpointMismatchError` names the differences."""
    model = ViCLIP(config)
    load_checkpoint_into(model, checkpoint, key=f"reward.{name}.model.checkpoint", who=f"reward '{name}'",
                         allow_pickle=allow_pickle)
    return model


def viclip_reward(
    checkpoint: str,
    tokenizer_path: str | None = None,
    num_frames: int = 8,
    gradient_checkpointing: bool = False,
    name: str = "viclip",
    size: Literal["L/14", "B/16", "tiny"] = "L/14",
    antialias: bool = False,
    allow_pickle: bool = False,
) -> VideoTextReward:
    """The ViCLIP reward from a local checkpoint, e.g. ``/ckpts/ViClip-InternVid-10M-FLT.pth``.

    tokenizer_path: a local ``bpe_simple_vocab_16e6.txt.gz``; None uses open_clip's copy (offline).
    num_frames: frames per scored clip; the official model has 8 temporal slots, so another count
    fails to load (CheckpointMismatchError on temporal_positional_embedding).
    size: "L/14" (official), "B/16", "tiny" (tests). antialias: see :func:`rewards.video_text.preprocess_frames`.
    """
    if size not in SIZES:
        raise ValueError(f"reward '{name}': size must be one of {sorted(SIZES)}, found {size!r}")
    model = load_viclip(checkpoint, SIZES[size](num_frames=num_frames), name=name, allow_pickle=allow_pickle)
    tokenizer = _tokenizer(model.config, tokenizer_path, name)
    return VideoTextReward.of(model, tokenizer, name=name, antialias=antialias, gradient_checkpointing=gradient_checkpointing)


def tiny_viclip_reward(
    seed: int = 0,
    num_frames: int = 8,
    checkpoint: str | None = None,
    gradient_checkpointing: bool = False,
    name: str = "viclip",
    antialias: bool = False,
) -> VideoTextReward:
    """A :class:`VideoTextReward` over :func:`tiny_viclip_model`, or over the weights of a tiny
    checkpoint in the official layout. Fully offline."""
    if checkpoint is not None:
        model = load_viclip(checkpoint, ViCLIPConfig.tiny(num_frames=num_frames), name=name)
    else:
        model = tiny_viclip_model(seed, num_frames=num_frames)
    return VideoTextReward.of(model, _tokenizer(model.config, None, name), name=name, antialias=antialias,
                              gradient_checkpointing=gradient_checkpointing)
