"""ImageReward (Xu et al., 2023): BLIP image-grounded text encoder + a linear head, our implementation.

For a frame x and prompt p, as the official ``ImageReward.score`` / ``score_gard``:

    e      = ViT(preprocess(x))                        197 image tokens of width 1024 (ViT-L/16, 224 px)
    h      = BERT(p; cross-attention to e)[CLS]        768 (BLIP's "med" BertModel, mode 'multimodal')
    r(x,p) = (head(h) - MEAN) / STD                    MEAN = 0.16717362830052426, STD = 1.0333394966054072
    score  = mean over frames f of r(video[f], p)

``head`` is Linear 768->1024->128->64->16->1 with dropout 0.2, 0.2, 0.1 between (the reference's
ReLUs are commented out, so the head is an affine map). ``relu_form=True`` gives T2V-Turbo's
shaping instead (``get_img_reward_fn``: ``-F.relu(-rewards + 2)`` per image, the training loss
being ``-mean(score) * reward_scale``):

    score_relu = mean over frames f of -relu(2 - r_f) = mean_f (min(r_f, 2) - 2)      (<= 0)

so the loss ``w * mean relu(2 - r_f)`` is a hinge: a frame whose r already exceeds 2 gives zero
loss and zero gradient. Shaping is per frame, before averaging, as T2V-Turbo scores frames
one by one.

Text side: bert-base-uncased with BLIP's two added tokens ([DEC] = 30522, [ENC] = 30523; the
word embedding has 30524 rows), padded to max_length 35 and truncated. ImageReward keeps [CLS]
as the first token (no [ENC] swap). Because the text encoder attends to the image, only the
tokenisation is cached; the encoder runs per frame, with gradients flowing through the
cross-attention keys and values back to the pixels.

Preprocessing: the official transform is ``Resize(224, BICUBIC) + CenterCrop(224) + ToTensor +
Normalize(OpenAI mean, std)`` on a PIL image; ``match_pil=True`` (default) reproduces it on the
uint8 image ``round(255 * frame)`` (see ``rewards.base.preprocess_images``; measured equal in
tests/rewards/test_image_reward.py), ``match_pil=False`` equals the torchvision tensor transform
T2V-Turbo applies to decoded frames (bicubic overshoot at hard edges is then not clipped).

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
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from rewards.base import OPENAI_MEAN, OPENAI_STD, FrozenReward, check_video, preprocess_images
from rewards.internvideo2 import TINY_VOCAB, load_bert_tokenizer, tiny_bert_tokenizer
from rewards.loading import load_checkpoint_into

# The official normalisation of the head's output (ImageReward.py: self.mean, self.std).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
# T2V-Turbo's hinge: -relu(RELU_TARGET - r).
RELU_TARGET = 2.0
# BLIP's init_tokenizer adds these after bert-base-uncased's 30522 tokens.
BLIP_EXTRA_TOKENS = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]}
# Official checkpoint entries the score does not use (exact names, or prefixes ending in ".").
UNUSED_KEYS: tuple[str, ...] = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


@dataclass(frozen=True)
class ImageRewardConfig:
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
        if self.image_size % self.patch_size:
            raise ValueError(f"ImageRewardConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, what in ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise ValueError(f"ImageRewardConfig: {what} width {width} is not divisible by {heads} heads")
        if len(self.head_widths) != 4:
            raise ValueError(f"ImageRewardConfig: head_widths must have 4 entries (3 dropouts), found {self.head_widths}")

    @classmethod
    def large(cls, **changes) -> "ImageRewardConfig":
        return replace(cls(), **changes)

    @classmethod
    def tiny(cls, **changes) -> "ImageRewardConfig":
        """A CPU-test size: 32 px, 8 px patches, widths 32/24, 2 layers each, the tiny vocabulary + 2."""
        return replace(
            cls(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, vision_mlp_width=128,
                text_width=24, text_layers=2, text_heads=2, text_mlp_width=48, vocab_size=len(TINY_VOCAB) + 2,
                text_positions=64, head_widths=(32, 16, 8, 4)),
            **changes,
        )


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


class ScoreHead(nn.Module):
    """The reference ``MLP``: Linear/Dropout stack, no activations; keys ``layers.{0,2,4,6,7}``."""

    def __init__(self, width: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        a, b, c, d = hidden
        self.layers = nn.Sequential(
            nn.Linear(width, a), nn.Dropout(0.2), nn.Linear(a, b), nn.Dropout(0.2),
            nn.Linear(b, c), nn.Dropout(0.1), nn.Linear(c, d), nn.Linear(d, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """BLIP's towers + head. ``score`` returns the normalised reward r; checkpoints are read in the
    official key layout (``from_official``)."""

    def __init__(self, config: ImageRewardConfig = ImageRewardConfig()) -> None:
        super().__init__()
        self.config = config
        self.vision, self.text = blip_towers(config)
        self.mlp = ScoreHead(config.text_width, config.head_widths)

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


class ImageRewardReward(FrozenReward):
    """Frozen ImageReward scoring each frame against its prompt (see the module docstring).

    forward(video: B,F,3,H,W float in [0, 1], prompts: B strings) -> B float32 scores: mean over
    frames of r, or of -relu(2 - r) with ``relu_form``. Differentiable w.r.t. ``video``; the
    model stays in eval mode and its parameters never require grad.
    """

    kind: Literal["image"] = "image"

    def __init__(self, model: ImageRewardModel, tokenizer, *, match_pil: bool = True, relu_form: bool = False,
                 name: str = "image_reward") -> None:
        super().__init__(name)
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.match_pil = match_pil
        self.relu_form = relu_form
        # the prompt cache holds (ids L, mask L) on the model's device: the text encoder attends to
        # the image, so only tokenisation can be cached
        self.train(False)

    def tokens(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """B prompts -> input_ids, attention_mask: B,max_text_length int64 (BLIP tokenizer, cached)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if missing:
            device = next(self.model.parameters()).device
            enc = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=self.model.config.max_text_length, return_tensors="pt")
            self._prompt_cache.update(zip(missing, zip(enc["input_ids"].to(device), enc["attention_mask"].to(device))))
        ids, mask = zip(*(self._prompt_cache[p] for p in prompts))
        return torch.stack(ids), torch.stack(mask)

    def preprocess(self, images: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,3,S,S float32: Resize(S, bicubic) + CenterCrop(S) + OpenAI Normalize."""
        return preprocess_images(images, self.model.config.image_size, OPENAI_MEAN, OPENAI_STD, "bicubic",
                                 match_pil=self.match_pil)

    def frame_rewards(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W in [0, 1] -> B,F float32 normalised rewards r, each frame against its prompt."""
        check_video(video, prompts, who=f"reward '{self.name}'")
        batch, frames = video.shape[:2]
        dtype = next(self.model.parameters()).dtype
        pixels = self.preprocess(video.flatten(0, 1)).to(dtype)
        ids, mask = self.tokens(list(prompts))
        ids, mask = ids.repeat_interleave(frames, 0), mask.repeat_interleave(frames, 0)
        return self.model.score(pixels, ids, mask).view(batch, frames)

    def forward(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1]; prompts: B strings -> B float32 mean-over-frames scores."""
        r = self.frame_rewards(video, prompts)
        if self.relu_form:
            r = -F.relu(RELU_TARGET - r)
        return r.mean(1)


def blip_tokenizer(base):
    """BLIP's ``init_tokenizer`` on a loaded BERT tokenizer: adds [DEC] (bos) and [ENC] (in place)."""
    base.add_special_tokens(dict(BLIP_EXTRA_TOKENS))
    return base


def tiny_blip_tokenizer():
    """The tiny WordPiece vocabulary of ``rewards.internvideo2`` + BLIP's two tokens (no files, no network)."""
    return blip_tokenizer(tiny_bert_tokenizer())


def load_blip_tokenizer(path: str | os.PathLike, *, name: str = "image_reward"):
    """bert-base-uncased's tokenizer from a local folder or its vocab.txt, plus BLIP's tokens; never downloads."""
    return blip_tokenizer(load_bert_tokenizer(path, name=name))


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


def image_reward(
    checkpoint: str,
    tokenizer_path: str,
    name: str = "image_reward",
    size: Literal["large", "tiny"] = "large",
    relu_form: bool = False,
    match_pil: bool = True,
    gradient_checkpointing: bool = False,
    allow_pickle: bool = False,
) -> ImageRewardReward:
    """ImageReward-v1.0 from local files, e.g. ``/ckpts/ImageReward.pt`` and a bert-base-uncased folder.

    size: "large" (official) or "tiny" (tests; with a vocab.txt of the tiny vocabulary). relu_form:
    score with T2V-Turbo's ``-relu(2 - r)`` (see the module docstring). match_pil: see
    :meth:`ImageRewardReward.preprocess`.
    """
    if size not in SIZES:
        raise ValueError(f"reward '{name}': size must be one of {sorted(SIZES)}, found {size!r}")
    config = SIZES[size]()
    tokenizer = load_blip_tokenizer(tokenizer_path, name=name)
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"reward '{name}': the tokenizer at {tokenizer_path!r} has {len(tokenizer)} tokens with BLIP's [DEC] and "
            f"[ENC], the {size} text encoder {config.vocab_size}; ImageReward uses bert-base-uncased (30522 + 2)"
        )
    model = load_image_reward_model(checkpoint, config, name=name, allow_pickle=allow_pickle)
    model.set_gradient_checkpointing(gradient_checkpointing)
    return ImageRewardReward(model, tokenizer, match_pil=match_pil, relu_form=relu_form, name=name)


def tiny_image_reward(
    seed: int = 0,
    checkpoint: str | None = None,
    name: str = "image_reward",
    relu_form: bool = False,
    match_pil: bool = True,
    gradient_checkpointing: bool = False,
) -> ImageRewardReward:
    """An :class:`ImageRewardReward` over :func:`tiny_image_reward_model` (or a tiny official-layout
    checkpoint) with :func:`tiny_blip_tokenizer`. Fully offline."""
    if checkpoint is not None:
        model = load_image_reward_model(checkpoint, ImageRewardConfig.tiny(), name=name)
    else:
        model = tiny_image_reward_model(seed)
    model.set_gradient_checkpointing(gradient_checkpointing)
    return ImageRewardReward(model, tiny_blip_tokenizer(), match_pil=match_pil, relu_form=relu_form, name=name)
