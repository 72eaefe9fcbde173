"""Model builders: seeded tiny variants for tests and the toy default, local-folder loaders for
real families, and full-size random backbones (from a config's ``arch:``) for benchmarks."""

from turbo.models.full import random_backbone, random_cond
from turbo.models.load import load_backbone, load_text_encoder, load_vae
from turbo.models.tiny import (tiny_clip_text_encoder, tiny_hunyuan, tiny_hunyuan_text_encoder, tiny_hunyuan_vae,
                               tiny_sd3, tiny_sd3_text_encoder, tiny_sd_vae, tiny_sdxl_text_encoder, tiny_text_encoder,
                               tiny_unet2d, tiny_unet3d, tiny_wan, tiny_wan_vae)

__all__ = ["load_backbone", "load_text_encoder", "load_vae", "random_backbone", "random_cond",
           "tiny_clip_text_encoder", "tiny_hunyuan", "tiny_hunyuan_text_encoder", "tiny_hunyuan_vae", "tiny_sd3",
           "tiny_sd3_text_encoder", "tiny_sd_vae", "tiny_sdxl_text_encoder", "tiny_text_encoder", "tiny_unet2d",
           "tiny_unet3d", "tiny_wan", "tiny_wan_vae"]
