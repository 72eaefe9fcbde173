"""The video VAE: pixels <-> the normalised latents the backbone works in.

Two layouts exist in the families we support:
- a causal video VAE (Wan's ``AutoencoderKLWan``): F = 1 + 4k pixel frames <-> 1 + k latent
  frames; latent frame j decodes to pixel frames 0 (j = 0) or 4j-3 .. 4j, and depends on every
  latent frame before it. Decoding a chosen set of pixel frames therefore needs only the latent
  prefix up to the last one; that prefix is decoded and the rest never is (exact, not approximate).
- a per-frame image VAE (SD's ``AutoencoderKL``, ModelScope / VideoCrafter2): latent frame i is
  pixel frame i, so only the chosen frames are decoded.
Decoding runs under activation checkpointing when gradients are on, so reward feedback stores
only the VAE's inputs, not its activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class VideoVAE(nn.Module):
    """Frozen VAE wrapper. Pixel videos are B,F,3,H,W float in [0, 1]; latents are B,C,f,h,w,
    normalised to roughly unit variance (Wan: per-channel mean/std; SD: ``scaling_factor``)."""

    def __init__(self, vae: nn.Module, checkpoint_decode: bool = True):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.checkpoint_decode = checkpoint_decode
        cfg = vae.config
        self.causal = hasattr(cfg, "z_dim")  # AutoencoderKLWan
        if self.causal:
            self.temporal = int(getattr(cfg, "scale_factor_temporal", None) or 4)
            self.spatial = int(getattr(cfg, "scale_factor_spatial", None) or 8)
            self.latent_channels = cfg.z_dim
            self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        else:
            self.temporal = 1
            self.spatial = 2 ** (len(cfg.block_out_channels) - 1)
            self.latent_channels = cfg.latent_channels
            self.scaling_factor = cfg.scaling_factor

    def train(self, mode: bool = True) -> "VideoVAE":
        return super().train(False)  # always frozen

    # --- shapes ----------------------------------------------------------------------
    def check_video_size(self, num_frames: int, height: int, width: int, key: str = "data") -> None:
        """Raise a clear error when the VAE cannot take this many frames or this resolution."""
        if self.causal and (num_frames - 1) % self.temporal != 0:
            raise ValueError(f"{key}.num_frames must be 1 + {self.temporal}k for this causal VAE, found {num_frames}")
        if height % self.spatial or width % self.spatial:
            raise ValueError(f"{key}.height and {key}.width must be multiples of {self.spatial}, found {height}x{width}")

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal if self.causal else num_frames

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.latent_channels, self.latent_frames(num_frames), height // self.spatial, width // self.spatial)

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.temporal if self.causal else latent_frames

    # --- encode / decode -----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """B,F,3,H,W in [0,1] -> normalised latents B,C,f,h,w (the posterior mode)."""
        x = video.permute(0, 2, 1, 3, 4) * 2 - 1  # B,3,F,H,W in [-1,1]
        if self.causal:
            z = self.vae.encode(x.to(self.mean.dtype)).latent_dist.mode()
            return (z - self.mean) / self.std
        b, _, f = x.shape[:3]
        z = self.vae.encode(x.transpose(1, 2).flatten(0, 1)).latent_dist.mode() * self.scaling_factor
        return z.unflatten(0, (b, f)).transpose(1, 2)

    def _decode(self, z: Tensor) -> Tensor:
        if self.causal:
            x = self.vae.decode(z * self.std + self.mean).sample  # B,3,F,H,W
        else:
            b, _, f = z.shape[:3]
            x = self.vae.decode(z.transpose(1, 2).flatten(0, 1) / self.scaling_factor).sample
            x = x.unflatten(0, (b, f)).transpose(1, 2)
        return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)  # B,F,3,H,W in [0,1]

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents B,C,f,h,w -> B,F,3,H,W in [0,1]."""
        if self.checkpoint_decode and torch.is_grad_enabled() and latents.requires_grad:
            return checkpoint(self._decode, latents, use_reentrant=False)
        return self._decode(latents)

    def decode_frames(self, latents: Tensor, frame_ids: Tensor) -> Tensor:
        """Decode only what the pixel frames ``frame_ids`` (sorted, 1-D) need -> B,K,3,H,W."""
        frame_ids = torch.as_tensor(frame_ids, dtype=torch.long).cpu()
        total = self.pixel_frames(latents.shape[2])
        if frame_ids.numel() == 0 or frame_ids.min() < 0 or frame_ids.max() >= total:
            raise ValueError(f"frame ids must lie in 0..{total - 1}, found {frame_ids.tolist()}")
        if self.causal:
            last = (int(frame_ids.max()) + self.temporal - 1) // self.temporal  # latent frame holding it
            return self.decode(latents[:, :, : last + 1])[:, frame_ids]
        return self.decode(latents[:, :, frame_ids.to(latents.device)])
