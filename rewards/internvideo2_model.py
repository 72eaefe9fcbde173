"""InternVideo2-S2's architecture (the parts the score uses), in the official checkpoint's names:
the config, the vision tower (patch embedding, pre-norm blocks with RMS-normalised q / k and
LayerScale, attention pooling), the BERT text tower and the projections. The reward, its
tokenizer and checkpoint loading are in rewards/internvideo2.py, which re-exports these names.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, replace
from typing import Mapping

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import Mlp
from torch import Tensor, nn

from rewards.base import TowerSizes


@dataclass(frozen=True)
class InternVideo2Config(TowerSizes):
    """Sizes of an InternVideo2 stage-2 model. The defaults (``large()``) are the 1B / BERT-large release:
    ViT 1408 x 40, BERT-large text, 512-d shared space."""

    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 4
    vision_width: int = 1408
    vision_layers: int = 40
    vision_heads: int = 16
    vision_mlp_width: int = 6144  # 1408 * 48 / 11
    clip_embed_dim: int = 768  # attention-pooling output
    pool_heads: int = 16
    embed_dim: int = 512  # the shared video-text space
    text_width: int = 1024
    text_layers: int = 19  # BERT-large's first fusion_layer layers: the text-only part
    text_heads: int = 16
    text_mlp_width: int = 4096
    vocab_size: int = 30522  # bert-large-uncased
    text_positions: int = 512
    max_text_length: int = 40

    def head_splits(self) -> tuple[tuple[int, int, str], ...]:
        return (*super().head_splits(), (self.vision_width, self.pool_heads, "pooling"))

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls, **changes) -> "InternVideo2Config":
        """A CPU-test size: 32 px, 8 px patches, width 32, 2 layers, 2 heads, tiny vocabulary."""
        return cls(**dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, vision_mlp_width=64,
                          clip_embed_dim=24, pool_heads=2, embed_dim=16, text_width=32, text_layers=2, text_heads=2,
                          text_mlp_width=64, vocab_size=len(TINY_VOCAB), text_positions=64, max_text_length=16) | changes)


SIZES = {"1B": InternVideo2Config.large, "tiny": InternVideo2Config.tiny}

# A WordPiece vocabulary for tiny models: every lower-case ASCII word splits into letters.
TINY_VOCAB: tuple[str, ...] = tuple(dict.fromkeys([
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *string.ascii_lowercase, *string.digits,
    *(f"##{c}" for c in string.ascii_lowercase + string.digits),
    "a", "an", "and", "moving", "standing", "still", "left", "right", "up", "down",
    "red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange", "circle", "square", "triangle",
]))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (eps 1e-6)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, width: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), init))

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() * self.gamma.float()).to(x.dtype)  # float32 as the reference (force_fp32)


class Attention(nn.Module):
    """Self-attention, no qkv bias, q and k RMS-normalised over all heads together."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_norm = RMSNorm(width)
        self.k_norm = RMSNorm(width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, c).unbind(2)  # each B,N,C
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.vision_width)
        self.attn = Attention(cfg.vision_width, cfg.vision_heads)
        self.ls1 = LayerScale(cfg.vision_width)
        self.norm2 = RMSNorm(cfg.vision_width)
        self.mlp = Mlp(cfg.vision_width, cfg.vision_mlp_width)  # timm's: fc1, GELU, fc2 (no dropout at p=0)
        self.ls2 = LayerScale(cfg.vision_width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(3, cfg.vision_width, (1, p, p), (1, p, p))

    def forward(self, pixels: Tensor) -> Tensor:
        """B,3,T,H,W -> B,T*N,C tokens, frame-major."""
        x = self.proj(pixels)  # B,C,T,h,w
        return x.flatten(2).transpose(1, 2)


class PoolingCrossAttention(nn.Module):
    """Multi-head attention of one query over all tokens; q, k, v biases kept as separate parameters."""

    def __init__(self, width: int, heads: int, out_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.k_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, out_width)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """query B,1,C; key, value B,N,C -> B,out_width."""
        b, n, c = key.shape
        split = lambda t: t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q = split(F.linear(query, self.q.weight, self.q_bias))
        k = split(F.linear(key, self.k.weight, self.k_bias))
        v = split(F.linear(value, self.v.weight, self.v_bias))
        out = F.scaled_dot_product_attention(q, k, v)  # B,heads,1,head_dim
        return self.proj(out.transpose(1, 2).reshape(b, c))


class AttentionPooling(nn.Module):
    """The reference's ``clip_projector``: the mean token attends over all tokens."""

    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        width = cfg.vision_width
        self.norm1_q = nn.LayerNorm(width, eps=1e-5)
        self.norm1_k = nn.LayerNorm(width, eps=1e-5)
        self.norm1_v = nn.LayerNorm(width, eps=1e-5)
        self.cross_attn = PoolingCrossAttention(width, cfg.pool_heads, cfg.clip_embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        query = self.norm1_q(x.mean(1, keepdim=True))
        return self.cross_attn(query, self.norm1_k(x), self.norm1_v(x))


class InternVideo2Vision(nn.Module):
    """pixels B,3,T,H,W (normalised, T == num_frames) -> B,clip_embed_dim pooled features."""

    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        self.num_frames = cfg.num_frames
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_frames * cfg.patches_per_frame, cfg.vision_width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.vision_layers))
        self.clip_projector = AttentionPooling(cfg)
        self.gradient_checkpointing = False

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.ndim != 5 or pixels.shape[2] != self.num_frames:
            raise ValueError(f"InternVideo2Vision: expected pixels B,3,{self.num_frames},H,W, found {tuple(pixels.shape)}")
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.clip_projector(x)  # no final norm: the reference pools the last block's output


class InternVideo2Text(nn.Module):
    """BERT text encoder; ``bert`` keeps the checkpoint's ``text_encoder.bert.*`` names.

    input_ids, attention_mask: B,L int64 -> B,text_width, the CLS token's last hidden state.
    """

    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        bert_cfg = BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_mlp_width, hidden_act="gelu",
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=cfg.text_positions,
            type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
        )
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]


class InternVideo2(nn.Module):
    """The InternVideo2 stage-2 dual encoder (score path), named as the official checkpoint."""

    def __init__(self, config: InternVideo2Config = InternVideo2Config()) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = InternVideo2Vision(config)
        self.text_encoder = InternVideo2Text(config)
        self.vision_proj = nn.Linear(config.clip_embed_dim, config.embed_dim)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Vision side as the reference initialises it (normal std 0.02 for linear weights, zero
        biases, 1/sqrt(2 * depth) rescaled residual projections); BERT keeps transformers' init."""
        vision = self.vision_encoder
        for module in [*vision.modules(), self.vision_proj, self.text_proj]:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for depth, block in enumerate(vision.blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * depth))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * depth))
        nn.init.normal_(vision.cls_token, std=0.02)
        nn.init.normal_(vision.pos_embed, std=0.02)  # the reference starts from 3-D sin-cos; any table loads over it

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the vision blocks in backward (the text side never needs gradients)."""
        self.vision_encoder.gradient_checkpointing = enabled

    @torch.no_grad()
    def set_num_frames(self, num_frames: int) -> None:
        """Score clips of ``num_frames`` frames: resample the position table in time (a no-op if equal)."""
        vision = self.vision_encoder
        if num_frames == vision.num_frames:
            return
        table = resample_temporal_pos_embed(vision.pos_embed.data, num_frames, self.config.patches_per_frame)
        vision.pos_embed = nn.Parameter(table, requires_grad=vision.pos_embed.requires_grad)
        vision.num_frames = num_frames
        self.config = replace(self.config, num_frames=num_frames)

    def encode_video(self, pixels: Tensor) -> Tensor:
        """B,T,3,H,W normalised pixels (T == num_frames) -> B,embed_dim (not normalised)."""
        return self.vision_proj(self.vision_encoder(pixels.transpose(1, 2)))

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """{"input_ids", "attention_mask"}: B,L int64 -> B,embed_dim (not normalised)."""
        return self.text_proj(self.text_encoder(tokens["input_ids"], tokens["attention_mask"]))


def resample_temporal_pos_embed(pos_embed: Tensor, num_frames: int, patches_per_frame: int) -> Tensor:
    """1, 1 + T0 * N, C -> 1, 1 + num_frames * N, C: linear interpolation along time
    (align_corners=False), the CLS entry unchanged — the reference's
    ``interpolate_pos_embed_internvideo2_new``, used to run the f4 checkpoint on 8 frames."""
    extra, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    if tokens.shape[1] % patches_per_frame:
        raise ValueError(
            f"pos_embed has {tokens.shape[1]} patch entries, not a multiple of {patches_per_frame} patches per frame"
        )
    frames = tokens.shape[1] // patches_per_frame
    if frames == num_frames:
        return pos_embed
    width = tokens.shape[-1]
    x = tokens.reshape(frames, patches_per_frame, width).permute(1, 2, 0)  # N,C,T0
    x = F.interpolate(x.float(), size=num_frames, mode="linear", align_corners=False).to(tokens.dtype)
    return torch.cat([extra, x.permute(2, 0, 1).reshape(1, num_frames * patches_per_frame, width)], dim=1)
