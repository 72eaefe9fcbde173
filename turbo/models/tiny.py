"""Seeded tiny models built from configs: the same diffusers / transformers classes as the real
families, shrunk so that a test or the embedded default runs on 2 CPU cores in seconds.

Every builder seeds a forked RNG, so building a model never moves the caller's random state.
"""

from __future__ import annotations

from diffusers import AutoencoderKLWan, UNet3DConditionModel, WanTransformer3DModel
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from turbo.seeding import seeded
from turbo.text import (CLIPTextEncoder, HunyuanVideoTextEncoder, SD3TextEncoder, SDXLTextEncoder, TextEncoder)
from turbo.vae import VideoVAE


def tiny_wan(seed: int = 0, in_channels: int = 16, num_layers: int = 2, num_heads: int = 2,
             head_dim: int = 16, ffn_dim: int = 64, text_dim: int = 32, out_channels: int | None = None,
             image_dim: int | None = None, patch_size: tuple[int, int, int] = (1, 2, 2)) -> WanTransformer3DModel:
    """A 2-layer ``WanTransformer3DModel`` (the Wan2.1 architecture; patch (1, 2, 2), RoPE).
    I2V (Wan2.1-I2V's layout): ``in_channels`` 16 + 16 + 4 (noisy latent, first-frame latent, mask),
    ``out_channels`` 16, and ``image_dim`` the width of the image tokens (CLIP vision features)
    read by an extra cross-attention (``added_kv_proj_dim`` = the model width, as in Wan)."""
    return seeded(seed, lambda: WanTransformer3DModel(
        patch_size=tuple(patch_size), num_attention_heads=num_heads, attention_head_dim=head_dim,
        in_channels=in_channels, out_channels=out_channels or in_channels, text_dim=text_dim, freq_dim=256,
        ffn_dim=ffn_dim, num_layers=num_layers, rope_max_seq_len=32, image_dim=image_dim,
        added_kv_proj_dim=None if image_dim is None else num_heads * head_dim))


def tiny_unet3d(seed: int = 0, in_channels: int = 4, block_out_channels: tuple[int, ...] = (32, 64),
                cross_attention_dim: int = 32) -> UNet3DConditionModel:
    """A two-level ``UNet3DConditionModel`` (the ModelScope T2V architecture)."""
    return seeded(seed, lambda: UNet3DConditionModel(
        block_out_channels=tuple(block_out_channels), layers_per_block=1, sample_size=4,
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32))


def tiny_wan_vae(seed: int = 0, base_dim: int = 8, z_dim: int = 16) -> VideoVAE:
    """An ``AutoencoderKLWan`` with Wan's compression (8x space, 4x time, causal) and few channels.
    Latent statistics are left at identity (mean 0, std 1): a random VAE has no data statistics."""
    vae = seeded(seed, lambda: AutoencoderKLWan(
        base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim))
    return VideoVAE(vae)


def tiny_text_encoder(seed: int = 0, dim: int = 32, num_layers: int = 2, max_length: int = 32) -> TextEncoder:
    """A tiny UMT5 encoder (Wan's text-encoder class) with the byte-level ByT5 tokenizer, which
    needs no vocabulary file and so works offline for any prompt."""
    tokenizer = ByT5Tokenizer()
    config = UMT5Config(vocab_size=len(tokenizer), d_model=dim, num_layers=num_layers, num_heads=2,
                        d_kv=dim // 2, d_ff=2 * dim, relative_attention_num_buckets=8, dropout_rate=0.0)
    return TextEncoder(seeded(seed, lambda: UMT5EncoderModel(config)), tokenizer, max_length)


def tiny_sd_vae(seed: int = 0, latent_channels: int = 4, scaling_factor: float = 0.18215,
                shift_factor: float | None = None) -> VideoVAE:
    """A per-frame ``AutoencoderKL`` (the SD / ModelScope layout) with 8x spatial compression.
    SDXL: ``scaling_factor`` 0.13025; SD3: 16 channels, 1.5305 and ``shift_factor`` 0.0609."""
    from diffusers import AutoencoderKL

    vae = seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, scaling_factor=scaling_factor, shift_factor=shift_factor))
    return VideoVAE(vae)


def tiny_hunyuan_vae(seed: int = 0, latent_channels: int = 16) -> VideoVAE:
    """An ``AutoencoderKLHunyuanVideo`` with HunyuanVideo's compression (8x space, 4x time, causal)
    and scaling factor (0.476986), and few channels."""
    from diffusers import AutoencoderKLHunyuanVideo

    return VideoVAE(seeded(seed, lambda: AutoencoderKLHunyuanVideo(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)))


# --- image and HunyuanVideo backbones -----------------------------------------------------------------
def tiny_hunyuan(seed: int = 0, in_channels: int = 16, out_channels: int | None = None, num_layers: int = 1,
                 num_single_layers: int = 1, num_heads: int = 2, head_dim: int = 16, text_dim: int = 32,
                 pooled_dim: int = 32, guidance_embeds: bool = True, image_condition_type: str | None = None):
    """A ``HunyuanVideoTransformer3DModel`` with one dual-stream and one single-stream block
    (patch 1x2x2, 3-axis RoPE splitting the head 4 + 6 + 6). T2V is guidance-distilled
    (``guidance_embeds``); I2V (``image_condition_type="latent_concat"``): ``in_channels`` 16 + 16 + 1."""
    from diffusers import HunyuanVideoTransformer3DModel

    t = head_dim // 4 if head_dim // 4 % 2 == 0 else head_dim // 4 - 1
    hw = (head_dim - t) // 2
    return seeded(seed, lambda: HunyuanVideoTransformer3DModel(
        in_channels=in_channels, out_channels=out_channels or in_channels, num_attention_heads=num_heads,
        attention_head_dim=head_dim, num_layers=num_layers, num_single_layers=num_single_layers,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, guidance_embeds=guidance_embeds,
        text_embed_dim=text_dim, pooled_projection_dim=pooled_dim, rope_axes_dim=(head_dim - 2 * hw, hw, hw),
        image_condition_type=image_condition_type))


def tiny_unet2d(seed: int = 0, in_channels: int = 4, block_out_channels: tuple[int, ...] = (16, 32),
                cross_attention_dim: int = 32, pooled_dim: int | None = None):
    """A two-level ``UNet2DConditionModel``: SD 1.5's layout (cross-attention in the upper level);
    with ``pooled_dim`` SDXL's (cross-attention in the lower level, linear projections, and the
    "text_time" micro-conditioning on the pooled text embedding and six size ids)."""
    from diffusers import UNet2DConditionModel

    common = dict(block_out_channels=tuple(block_out_channels), layers_per_block=1, sample_size=8,
                  in_channels=in_channels, out_channels=in_channels, cross_attention_dim=cross_attention_dim,
                  norm_num_groups=8)
    if pooled_dim is None:
        kwargs = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
    else:
        time_embed = 8
        kwargs = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                      use_linear_projection=True, transformer_layers_per_block=(1, 2),
                      addition_embed_type="text_time", addition_time_embed_dim=time_embed,
                      projection_class_embeddings_input_dim=6 * time_embed + pooled_dim)
    return seeded(seed, lambda: UNet2DConditionModel(**common, **kwargs))


def tiny_sd3(seed: int = 0, in_channels: int = 16, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16,
             text_dim: int = 64, pooled_dim: int = 32):
    """A two-block ``SD3Transformer2DModel`` (MMDiT, patch 2, positions up to 32x32 patches)."""
    from diffusers import SD3Transformer2DModel

    return seeded(seed, lambda: SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=in_channels, out_channels=in_channels, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=num_heads, joint_attention_dim=text_dim,
        caption_projection_dim=num_heads * head_dim, pooled_projection_dim=pooled_dim, pos_embed_max_size=32))


# --- text encoders of the image and HunyuanVideo families ----------------------------------------------
# The real tokenizers need vocabulary files; the byte-level ByT5 tokenizer needs none (pad 0, eos 1).
def _clip(seed: int, dim: int, projection_dim: int | None = None, max_positions: int = 77):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(ByT5Tokenizer()), hidden_size=dim, intermediate_size=2 * dim,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_positions,
                            projection_dim=projection_dim or dim, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return seeded(seed, lambda: cls(config))


def _clip_tokenizer(max_length: int = 77) -> ByT5Tokenizer:
    tok = ByT5Tokenizer()
    tok.model_max_length = max_length  # what CLIP's tokenizer says (diffusers' SD / SDXL pipelines read it)
    return tok


def tiny_clip_text_encoder(seed: int = 0, dim: int = 32, max_length: int = 77) -> CLIPTextEncoder:
    """SD 1.5 / ModelScope: a tiny ``CLIPTextModel``."""
    return CLIPTextEncoder(_clip(seed, dim, max_positions=max_length), _clip_tokenizer(max_length), max_length)


def tiny_sdxl_text_encoder(seed: int = 0, dim: int = 32, dim_2: int = 32, pooled_dim: int = 32) -> SDXLTextEncoder:
    """SDXL: a ``CLIPTextModel`` and a ``CLIPTextModelWithProjection`` (embeds dim + dim_2, pooled
    ``pooled_dim``)."""
    return SDXLTextEncoder(_clip(seed, dim), _clip_tokenizer(), _clip(seed + 1, dim_2, pooled_dim), _clip_tokenizer())


def tiny_sd3_text_encoder(seed: int = 0, clip_dim: int = 16, t5_dim: int = 64, pooled_dim: int = 16,
                          max_length: int = 32) -> SD3TextEncoder:
    """SD3: two ``CLIPTextModelWithProjection`` (2 x clip_dim features, zero-padded to T5's width;
    pooled 2 x pooled_dim) and a ``T5EncoderModel`` of width ``t5_dim``."""
    from transformers import T5Config, T5EncoderModel

    tok = ByT5Tokenizer()
    t5 = T5Config(vocab_size=len(tok), d_model=t5_dim, d_kv=t5_dim // 2, d_ff=2 * t5_dim, num_layers=2,
                  num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0)
    return SD3TextEncoder(_clip(seed, clip_dim, pooled_dim), _clip_tokenizer(), _clip(seed + 1, clip_dim, pooled_dim),
                          _clip_tokenizer(), seeded(seed + 2, lambda: T5EncoderModel(t5)), tok, max_length)


def tiny_hunyuan_text_encoder(seed: int = 0, dim: int = 32, pooled_dim: int = 32,
                              max_length: int = 32) -> HunyuanVideoTextEncoder:
    """HunyuanVideo: a 3-layer ``LlamaModel`` (states two from the top, after layer 1) on the real
    prompt template (its prefix counted in bytes), and a ``CLIPTextModel`` for the pooled text."""
    from transformers import LlamaConfig, LlamaModel

    tok = ByT5Tokenizer()
    llama = LlamaConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=3,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                        pad_token_id=0, bos_token_id=None, eos_token_id=1)
    return HunyuanVideoTextEncoder(seeded(seed, lambda: LlamaModel(llama)), tok, _clip(seed + 1, pooled_dim),
                                   _clip_tokenizer(), max_length, crop_start=None)
