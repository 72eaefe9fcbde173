"""ImageReward's network (Xu et al., 2023): BLIP's towers (transformers' classes) + the score head,
read from the official checkpoint's key layout. The reward around it is rewards/image_reward.py.

Key layout (official ``ImageReward.pt``, a flat ``state_dict`` of the reference ``ImageReward``
module, 625 entries): BLIP's timm-style ViT ``blip.visual_encoder.*`` (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``),
its med.py BERT ``blip.text_encoder.{embeddings, encoder.layer.N}.*`` and the head ``mlp.layers.*``.
The towers are transformers' ``BlipVisionModel`` (fused qkv, ``layer_norm1`` ...) and
``BlipTextModel`` (med.py's names, no token-type embedding, cross-attention keys / values reading
the image width through ``encoder_hidden_size``); ``from_official`` / ``to_official`` map the
names. Not used by the score and skipped on loading: ``blip.vision_proj``, ``blip.text_proj``
(BLIP's contrastive projections) and the buffer ``blip.text_encoder.embeddings.position_ids``. The
layout is written down in tests/rewards/data/image_reward_keys.json. On the same weights the
transformers towers give the hand-written towers they replaced to 5e-7 (checked when swapped).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from rewards.aesthetic import AestheticMLP
from rewards.base import TowerSizes
from rewards.internvideo2 import TINY_VOCAB
from rewards.loading import load_checkpoint_into

# The official normalisation of the head's output (ImageReward.py: self.mean, self.std).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
# Official checkpoint entries the score does not use (exact names, or prefixes ending in ".").
UNUSED_KEYS: tuple[str, ...] = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


@dataclass(frozen=True)
class ImageRewardConfig(TowerSizes):
    """Sizes of an ImageReward model. The defaults are ImageReward-v1.0 (BLIP ViT-L/16, BERT-base)."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_width: int = 4096
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp_width: int = 3072
    vocab_size: int = 30524  # bert-base-uncased + [DEC] + [ENC]
    text_positions: int = 512
    max_text_length: int = 35
    head_widths: tuple[int, ...] = (1024, 128, 64, 16)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.head_widths) != 4:
            raise ValueError(f"ImageRewardConfig: head_widths must have 4 entries (3 dropouts), found {self.head_widths}")

    @classmethod
    def tiny(cls, **changes) -> "ImageRewardConfig":
        """A CPU-test size: 32 px, 8 px patches, widths 32/24, 2 layers each, the tiny vocabulary + 2."""
        return cls(**dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, vision_mlp_width=128,
                          text_width=24, text_layers=2, text_heads=2, text_mlp_width=48, vocab_size=len(TINY_VOCAB) + 2,
                          text_positions=64, head_widths=(32, 16, 8, 4)) | changes)


SIZES = {"large": ImageRewardConfig.large, "tiny": ImageRewardConfig.tiny}


# --- the towers are transformers' BLIP classes; only the key names differ from the official file ---
# Official ImageReward.pt (BLIP's timm ViT + med.py BERT) -> ours (transformers' BlipVisionModel /
# BlipTextModel, whose text layers keep med.py's names). Prefixes, longest match first; inside a
# vision block the module names are renamed too.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.", "vision.encoder.layers."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    ("blip.text_encoder.", "text."),
)
BLOCK_NAMES: tuple[tuple[str, str], ...] = (
    (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."), (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
)


def _rename(key: str, prefixes, blocks) -> str:
    for source, target in prefixes:
        if key.startswith(source):
            rest = key[len(source):]
            if source.endswith("blocks.") or source.endswith("layers."):
                for a, b in blocks:
                    rest = rest.replace(a, b, 1)
            return target + rest
    return key


def from_official(key: str) -> str:
    """An official checkpoint key -> our state-dict key (``mlp.*``, the head, is the same in both)."""
    return _rename(key, OFFICIAL_PREFIXES, BLOCK_NAMES)


def to_official(key: str) -> str:
    """Our state-dict key -> the official checkpoint's (the inverse of ``from_official``)."""
    return _rename(key, [(b, a) for a, b in OFFICIAL_PREFIXES], [(b, a) for a, b in BLOCK_NAMES])


def _checkpointed_call(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def blip_towers(cfg: ImageRewardConfig) -> tuple[BlipVisionModel, BlipTextModel]:
    """BLIP's ViT (pre-norm, LayerNorm eps 1e-6, exact GELU, final norm over all tokens) and its
    med.py BERT in 'multimodal' mode (post-norm, eps 1e-12, no token-type embedding, cross-attention
    reading the image width), as transformers' classes, dropout off."""
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=cfg.vision_mlp_width, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        layer_norm_eps=1e-6, hidden_act="gelu", attention_dropout=0.0, initializer_range=0.02))
    text = BlipTextModel(BlipTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, encoder_hidden_size=cfg.vision_width,
        intermediate_size=cfg.text_mlp_width, num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.text_positions, layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0, bos_token_id=None, sep_token_id=None, initializer_range=0.02),
        add_pooling_layer=False)
    return vision, text


class ImageRewardModel(nn.Module):
    """BLIP's towers + head. ``score`` returns the normalised reward r; checkpoints are read in the
    official key layout (``from_official``)."""

    def __init__(self, config: ImageRewardConfig = ImageRewardConfig()) -> None:
        super().__init__()
        self.config = config
        self.vision, self.text = blip_towers(config)
        self.mlp = AestheticMLP((config.text_width, *config.head_widths, 1))  # the reference MLP: no activations

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute ViT blocks and BERT layers in backward (both carry gradients to the pixels).
        By hand: transformers recomputes a layer only in training mode (a frozen reward never is)
        and BlipTextModel has no switch for it."""
        for layer in (*self.vision.encoder.layers, *self.text.encoder.layer):
            layer.__dict__.pop("forward", None)
            if enabled:
                layer.forward = functools.partial(_checkpointed_call, type(layer).forward.__get__(layer))

    def text_features(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """pixels N,3,S,S normalised; input_ids, attention_mask N,L -> N,text_width: CLS of the text-with-image."""
        image = self.vision(pixel_values=pixels).last_hidden_state
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image)
        return out.last_hidden_state[:, 0]

    def score(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """-> N float32 r = (head(CLS) - SCORE_MEAN) / SCORE_STD (official ``score_gard``)."""
        raw = self.mlp(self.text_features(pixels, input_ids, attention_mask))[:, 0].float()
        return (raw - SCORE_MEAN) / SCORE_STD


def tiny_image_reward_model(seed: int = 0, **changes) -> ImageRewardModel:
    """A seeded random :func:`ImageRewardConfig.tiny` model; the global torch RNG is left untouched.

    Every Linear / Conv weight is drawn with std fan_in^-1/2 (variance-preserving), so that scores
    vary visibly with the input (the default inits shrink them through the towers and the head).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageRewardModel(ImageRewardConfig.tiny(**changes)).eval()
        with torch.no_grad():  # transformers' BLIP init (std 0.02) leaves a tiny random model nearly constant
            for layer in model.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    nn.init.normal_(layer.weight, std=layer.weight[0].numel() ** -0.5)
        return model


def load_image_reward_model(checkpoint: str | os.PathLike, config: ImageRewardConfig, *,
                            name: str = "image_reward", allow_pickle: bool = False) -> ImageRewardModel:
    """An :class:`ImageRewardModel` with the weights of a local official-layout checkpoint
    (:data:`UNUSED_KEYS` skipped; every other key must match in name and shape)."""
    model = ImageRewardModel(config)
    load_checkpoint_into(model, checkpoint, key=f"reward.{name}.model.checkpoint", who=f"reward '{name}'",
                         ignore=UNUSED_KEYS, allow_pickle=allow_pickle, rename=from_official)
    return model.eval()
