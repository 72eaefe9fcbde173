"""Seeded tiny models built from configs: the same diffusers / transformers classes as the real
families, shrunk so that a test or the embedded default runs on 2 CPU cores in seconds.

Every builder seeds a forked RNG, so building a model never moves the caller's random state.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UNet3DConditionModel, WanTransformer3DModel
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from turbo.text import TextEncoder
from turbo.vae import VideoVAE


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_wan(seed: int = 0, in_channels: int = 16, num_layers: int = 2, num_heads: int = 2,
             head_dim: int = 16, ffn_dim: int = 64, text_dim: int = 32) -> WanTransformer3DModel:
    """A 2-layer ``WanTransformer3DModel`` (the Wan2.1 architecture; patch (1, 2, 2), RoPE)."""
    return _seeded(seed, lambda: WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=head_dim,
        in_channels=in_channels, out_channels=in_channels, text_dim=text_dim, freq_dim=256,
        ffn_dim=ffn_dim, num_layers=num_layers, rope_max_seq_len=32))


def tiny_unet3d(seed: int = 0, in_channels: int = 4, block_out_channels: tuple[int, ...] = (32, 64),
                cross_attention_dim: int = 32) -> UNet3DConditionModel:
    """A two-level ``UNet3DConditionModel`` (the ModelScope T2V architecture)."""
    return _seeded(seed, lambda: UNet3DConditionModel(
        block_out_channels=tuple(block_out_channels), layers_per_block=1, sample_size=4,
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32))


def tiny_wan_vae(seed: int = 0, base_dim: int = 8, z_dim: int = 16) -> VideoVAE:
    """An ``AutoencoderKLWan`` with Wan's compression (8x space, 4x time, causal) and few channels.
    Latent statistics are left at identity (mean 0, std 1): a random VAE has no data statistics."""
    vae = _seeded(seed, lambda: AutoencoderKLWan(
        base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim))
    return VideoVAE(vae)


def tiny_text_encoder(seed: int = 0, dim: int = 32, num_layers: int = 2, max_length: int = 32) -> TextEncoder:
    """A tiny UMT5 encoder (Wan's text-encoder class) with the byte-level ByT5 tokenizer, which
    needs no vocabulary file and so works offline for any prompt."""
    tokenizer = ByT5Tokenizer()
    config = UMT5Config(vocab_size=len(tokenizer), d_model=dim, num_layers=num_layers, num_heads=2,
                        d_kv=dim // 2, d_ff=2 * dim, relative_attention_num_buckets=8, dropout_rate=0.0)
    return TextEncoder(_seeded(seed, lambda: UMT5EncoderModel(config)), tokenizer, max_length)


def tiny_sd_vae(seed: int = 0, latent_channels: int = 4) -> VideoVAE:
    """A per-frame ``AutoencoderKL`` (the SD / ModelScope layout) with 8x spatial compression."""
    from diffusers import AutoencoderKL

    vae = _seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.18215))
    return VideoVAE(vae)
