"""The toy world's models: a pixel-space "VAE", a word-level text encoder, the Wan-style backbone
the toy teachers are trained from, and loaders for the shipped teachers.

Why a pixel-space latent instead of a trained VAE: the world's frames are flat colours on a flat
background at 32x32, so a space-to-depth rearrangement (2x2 pixels -> 12 channels at 16x16) is
already a compact, *exact* latent. Every ToyBench point then measures the denoiser (teacher or
student), never VAE reconstruction error, and nothing has to be trained or shipped for it. It is
a per-frame VAE to the rest of turbo (``VideoVAE`` with ``temporal = 1``), so the same reward
feedback, frame selection and decode paths run as for SD-style VAEs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn
from transformers import UMT5Config, UMT5EncoderModel

from turbo.models.tiny import tiny_wan
from turbo.seeding import seeded
from turbo.text import TextEncoder
from turbo.toy.vocab import MAX_LENGTH, VOCAB, toy_tokenizer
from turbo.toy.world import parse_caption
from turbo.vae import VideoVAE

# Per-channel mean / std of the world's pixels in [-1, 1], measured on 512 clips of
# ToyWorld(9, 32, 32) (mostly the 0.1-grey background): latents come out roughly N(0, 1).
PIXEL_MEAN = (-0.724, -0.736, -0.742)
PIXEL_STD = (0.375, 0.340, 0.338)


class PixelVAE(VideoVAE):
    """Space-to-depth "VAE": B,F,3,H,W in [0,1] <-> B,3*p*p,F,H/p,W/p, normalised per RGB channel.
    Exact both ways (``decode(encode(x)) == x`` up to float rounding), no parameters."""

    def __init__(self, patch: int = 2, mean: tuple[float, ...] = PIXEL_MEAN, std: tuple[float, ...] = PIXEL_STD):
        nn.Module.__init__(self)
        self.patch = patch
        self.checkpoint_decode = False  # nothing to recompute: the decode is a reshape
        self.causal, self.temporal, self.spatial = False, 1, patch
        self.latent_channels = 3 * patch * patch
        # pixel_unshuffle orders output channels c * p * p + (i * p + j): repeat each RGB stat p*p times
        self.register_buffer("mean", torch.tensor(mean).repeat_interleave(patch * patch).view(1, -1, 1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std).repeat_interleave(patch * patch).view(1, -1, 1, 1, 1),
                             persistent=False)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        b, f = video.shape[:2]
        z = nnf.pixel_unshuffle(video.flatten(0, 1) * 2 - 1, self.patch)  # B*F, 3pp, h, w
        z = z.unflatten(0, (b, f)).transpose(1, 2)  # B, 3pp, F, h, w
        return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)

    def _decode(self, z: Tensor) -> Tensor:
        b, _, f = z.shape[:3]
        x = z * self.std.to(z.dtype) + self.mean.to(z.dtype)
        x = nnf.pixel_shuffle(x.transpose(1, 2).flatten(0, 1), self.patch).unflatten(0, (b, f))
        return (x / 2 + 0.5).clamp(0, 1)  # B,F,3,H,W

    def decode(self, latents: Tensor) -> Tensor:
        return self._decode(latents)


def toy_vae(patch: int = 2) -> PixelVAE:
    return PixelVAE(patch)


def toy_text_encoder_model(seed: int = 0, dim: int = 32, num_layers: int = 2) -> UMT5EncoderModel:
    """A tiny random UMT5 encoder over the toy vocabulary. It stays frozen; the backbone's own
    text projection learns to read it (random word embeddings are near-orthogonal at this width,
    and the residual stream keeps each word's identity at its position)."""
    config = UMT5Config(vocab_size=len(VOCAB), d_model=dim, num_layers=num_layers, num_heads=2, d_kv=dim // 2,
                        d_ff=2 * dim, relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                        eos_token_id=VOCAB["</s>"], decoder_start_token_id=0)
    return seeded(seed, lambda: UMT5EncoderModel(config))


class ToyTextEncoder(TextEncoder):
    """A TextEncoder that accepts only captions of the toy grammar (and "" for CFG's unconditional
    half): a prompt the world cannot show fails here with the word that is wrong, instead of being
    silently mapped to <unk> tokens."""

    def forward(self, prompts: list[str]):
        if not isinstance(prompts, str):
            for prompt in dict.fromkeys(prompts):
                if isinstance(prompt, str) and prompt.strip():
                    parse_caption(prompt)  # raises CaptionError naming the offending word
        return super().forward(prompts)


def toy_text_encoder(seed: int = 0, dim: int = 32, num_layers: int = 2) -> ToyTextEncoder:
    """The word-level toy text encoder (before it is shipped with a teacher)."""
    return ToyTextEncoder(toy_text_encoder_model(seed, dim, num_layers), toy_tokenizer(), MAX_LENGTH)


def toy_wan(seed: int = 0, in_channels: int = 12, out_channels: int | None = None, num_layers: int = 4,
            num_heads: int = 4, head_dim: int = 16, ffn_dim: int = 256, text_dim: int = 32,
            init: str | None = None, patch_size: tuple[int, int, int] = (1, 2, 2)):
    """The toy teachers' Wan2.1-architecture backbone (``WanTransformer3DModel``): 4 layers, width
    64, patch (1, 2, 2) on the 12-channel pixel latent (one token per 4x4 pixels).

    ``init``: start from shipped toy teacher ``init`` instead of random weights (the T2V teacher
    starts from the T2I one, the I2V teacher from the T2V one), or from a model folder at path
    ``init`` (one holding ``transformer/``, such as a run's exported ``teacher/``). Extra input channels (I2V's
    first-frame latent and mask) get zero weights in the patch embedding, so the initialised
    network computes exactly what ``init`` does until training teaches it to read them.
    """
    backbone = tiny_wan(seed=seed, in_channels=in_channels, out_channels=out_channels, num_layers=num_layers,
                        num_heads=num_heads, head_dim=head_dim, ffn_dim=ffn_dim, text_dim=text_dim,
                        patch_size=patch_size)
    if init is None:
        return backbone
    from turbo.toy.assets import manifest

    if init in manifest():  # a shipped name wins over a folder of that name in the working directory
        source = shipped_backbone(init).state_dict()
    elif Path(init).expanduser().is_dir():
        from turbo.models.load import load_backbone

        source = load_backbone(init, "wan", key="model.backbone.init").state_dict()
    else:
        raise ValueError(f"model.backbone.init={init!r} is neither a shipped toy teacher ({sorted(manifest())}) "
                         f"nor a model folder")
    own = backbone.state_dict()
    for name, value in source.items():
        if name not in own:
            raise ValueError(f"model.backbone.init={init!r}: its weight {name} has no place in this backbone")
        target = own[name]
        if name == "patch_embedding.weight" and value.shape[1] <= target.shape[1] and value.shape[0] == target.shape[0]:
            padded = torch.zeros_like(target)
            padded[:, : value.shape[1]] = value
            value = padded
        if value.shape != target.shape:
            raise ValueError(f"model.backbone.init={init!r}: {name} is {tuple(value.shape)} there, "
                             f"{tuple(target.shape)} here (the architecture numbers must match)")
        own[name] = value
    backbone.load_state_dict(own)
    return backbone


def shipped_backbone(name: str, family: str = "wan"):
    """The backbone of shipped toy teacher ``name`` (checksums checked), in float32 also when its
    file is stored in float16 (``ship --storage-dtype float16``): the toy teachers compute in float32."""
    from turbo.models.load import load_backbone
    from turbo.toy.assets import asset

    return load_backbone(str(asset(name)), family, key=f"toy teacher {name!r}").float()


def shipped_text_encoder(name: str) -> ToyTextEncoder:
    """The frozen text encoder shipped with toy teacher ``name`` (checksums checked)."""
    from turbo.models.load import load_text_encoder
    from turbo.toy.assets import asset

    loaded = load_text_encoder(str(asset(name)), max_length=MAX_LENGTH, key=f"toy teacher {name!r}")
    return ToyTextEncoder(loaded.model, loaded.tokenizer, MAX_LENGTH)
