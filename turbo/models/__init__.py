"""Model builders: seeded tiny variants for tests and the toy default, local-folder loaders for
real families."""

from turbo.models.load import load_backbone, load_text_encoder, load_vae
from turbo.models.tiny import tiny_sd_vae, tiny_text_encoder, tiny_unet3d, tiny_wan, tiny_wan_vae

__all__ = ["load_backbone", "load_text_encoder", "load_vae", "tiny_sd_vae", "tiny_text_encoder", "tiny_unet3d", "tiny_wan",
           "tiny_wan_vae"]
