"""The video VAE: pixels <-> the normalised latents the backbone works in.

Two layouts exist in the families we support:
- a causal video VAE (Wan's ``AutoencoderKLWan``, HunyuanVideo's ``AutoencoderKLHunyuanVideo``):
  F = 1 + 4k pixel frames <-> 1 + k latent frames; latent frame j decodes to pixel frames 0 (j = 0)
  or 4j-3 .. 4j, and depends on every latent frame before it. Decoding a chosen set of pixel frames
  therefore needs only the latent prefix up to the last one. Wan's decoder is causal layer by
  layer (per-frame norms, cached causal convolutions), so that prefix is decoded and the rest never
  is (exact, not approximate). HunyuanVideo's is not: its GroupNorms pool statistics over all
  frames, so a prefix decodes differently (checked in tests), and the whole video is decoded.
- a per-frame image VAE (SD's ``AutoencoderKL``, ModelScope / VideoCrafter2, SD3): latent frame i
  is pixel frame i, so only the chosen frames are decoded.
Normalisation: Wan per channel, ``(z - mean) / std``; the others ``(z - shift_factor) *
scaling_factor`` (shift 0 except SD3's 0.0609; scale 0.18215 SD 1.5, 0.13025 SDXL, 1.5305 SD3,
0.476986 HunyuanVideo).
Decoding runs under activation checkpointing when gradients are on, so reward feedback stores
only the VAE's inputs, not its activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class VideoVAE(nn.Module):
    """Frozen VAE wrapper. Pixel videos are B,F,3,H,W float in [0, 1]; latents are B,C,f,h,w,
    normalised to roughly unit variance (Wan: per-channel mean/std; the others: ``shift_factor``
    and ``scaling_factor``)."""

    def __init__(self, vae: nn.Module, checkpoint_decode: bool = True):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.checkpoint_decode = checkpoint_decode
        cfg = vae.config
        self.per_channel = hasattr(cfg, "z_dim")  # AutoencoderKLWan: per-channel mean / std
        self.video_vae = self.per_channel or type(vae).__name__ == "AutoencoderKLHunyuanVideo"  # B,C,F,H,W in and out
        self.causal = self.video_vae
        self.prefix_decoding = self.per_channel  # decoding a latent prefix gives the same frames (Wan only)
        if self.per_channel:
            self.temporal = int(getattr(cfg, "scale_factor_temporal", None) or 4)
            self.spatial = int(getattr(cfg, "scale_factor_spatial", None) or 8)
            self.latent_channels = cfg.z_dim
            self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        else:
            if self.video_vae:
                self.temporal = int(cfg.temporal_compression_ratio)
                self.spatial = int(cfg.spatial_compression_ratio)
            else:
                self.temporal = 1
                self.spatial = 2 ** (len(cfg.block_out_channels) - 1)
            self.latent_channels = cfg.latent_channels
            self.scaling_factor = cfg.scaling_factor
            self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

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
        if self.per_channel:
            z = self.vae.encode(x.to(self.mean.dtype)).latent_dist.mode()
            return (z - self.mean) / self.std
        if self.video_vae:
            return self._scale(self.vae.encode(x).latent_dist.mode())
        b, _, f = x.shape[:3]
        z = self._scale(self.vae.encode(x.transpose(1, 2).flatten(0, 1)).latent_dist.mode())
        return z.unflatten(0, (b, f)).transpose(1, 2)

    def _scale(self, z: Tensor) -> Tensor:
        return (z - self.shift_factor) * self.scaling_factor if self.shift_factor else z * self.scaling_factor

    def _unscale(self, z: Tensor) -> Tensor:
        return z / self.scaling_factor + self.shift_factor if self.shift_factor else z / self.scaling_factor

    def _decode(self, z: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype  # float32 latents into a bf16 VAE
        if self.per_channel:
            x = self.vae.decode((z * self.std + self.mean).to(dtype)).sample  # B,3,F,H,W
        elif self.video_vae:
            x = self.vae.decode(self._unscale(z).to(dtype)).sample  # B,3,F,H,W
        else:
            b, _, f = z.shape[:3]
            x = self.vae.decode(self._unscale(z.transpose(1, 2).flatten(0, 1)).to(dtype)).sample
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
        if self.causal and self.prefix_decoding:
            last = (int(frame_ids.max()) + self.temporal - 1) // self.temporal  # latent frame holding it
            return self.decode(latents[:, :, : last + 1])[:, frame_ids]
        if self.causal:
            return self.decode(latents)[:, frame_ids]
        return self.decode(latents[:, :, frame_ids.to(latents.device)])
