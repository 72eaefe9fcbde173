"""Frozen text encoders: prompts -> token embeddings the backbone cross-attends to.

One encoder class per way a family's diffusers pipeline encodes a prompt (its ``encode_prompt``),
all frozen and cached per prompt:

- ``TextEncoder``: one T5-style encoder, last hidden state, padding zeroed (Wan, the toy world).
- ``CLIPTextEncoder``: CLIP's last hidden state over all 77 positions (SD 1.5, ModelScope).
- ``SDXLTextEncoder``: two CLIPs' penultimate states concatenated on features; pooled = the
  second CLIP's projected ``text_embeds``; the empty prompt maps to zeros (SDXL's
  ``force_zeros_for_empty_prompt``).
- ``SD3TextEncoder``: CLIP-L and CLIP-G penultimate states (features concatenated, zero-padded to
  T5's width) followed on the sequence by T5's tokens; pooled = both CLIPs' ``text_embeds``.
- ``HunyuanVideoTextEncoder``: a LLaMA's hidden states three from the top on diffusers' prompt
  template, with the template's tokens cropped off; pooled = CLIP-L's ``pooler_output``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TextCond:
    """The conditioning a backbone gets besides (x_t, t).

    ``embeds``: B,L,D float token embeddings (Wan: padding positions zeroed, as its pipeline does;
    the CLIP families: the encoder's states at every position, as theirs use them);
    ``mask``: B,L long (1 on real tokens). Optional, for the families that use them:
    ``pooled``: B,P pooled text embedding (SDXL, SD3, Flux, HunyuanVideo);
    ``image_latents``: B,C',F,h,w I2V conditioning concatenated to x_t on channels (the first
    frame's latent padded over time, plus mask channels; ``turbo.i2v``);
    ``image_embeds``: B,N,E image tokens (Wan I2V's CLIP vision features).
    """

    embeds: Tensor
    mask: Tensor
    pooled: Tensor | None = None
    image_latents: Tensor | None = None
    image_embeds: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> "TextCond":
        return TextCond(*(None if v is None else fn(name, v) for name, v in self._fields()))

    def _fields(self):
        return [(f, getattr(self, f)) for f in ("embeds", "mask", "pooled", "image_latents", "image_embeds")]

    @staticmethod
    def cat(conds: list["TextCond"]) -> "TextCond":
        values = []
        for name in ("embeds", "mask", "pooled", "image_latents", "image_embeds"):
            parts = [getattr(c, name) for c in conds]
            if all(p is None for p in parts):
                values.append(None)
            elif any(p is None for p in parts):
                raise ValueError(f"TextCond.cat: {name} is set on some conditions and not on others")
            else:
                values.append(torch.cat(parts))
        return TextCond(*values)

    def repeat(self, n: int) -> "TextCond":
        return self._map(lambda _, v: v.repeat(n, *([1] * (v.ndim - 1))))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextCond":
        return self._map(lambda name, v: v.to(device) if name == "mask" else v.to(device=device, dtype=dtype))

    def replace(self, **changes) -> "TextCond":
        return dataclasses.replace(self, **changes)


class TextEncoder(nn.Module):
    """A frozen transformers encoder plus its tokenizer (the T5 / UMT5 layout: last hidden state,
    padding positions zeroed). Embeddings are cached per prompt: the encoder is frozen, so a prompt
    always maps to the same tensors. Subclasses for other families override ``encode``."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._cache: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # always frozen

    @property
    def dim(self) -> int:
        """Width D of ``embeds``."""
        return _width(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """prompts -> (embeds B,L,D, mask B,L long, pooled B,P or None), uncached."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype), mask, None

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextCond:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, found {type(prompts).__name__}")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            embeds, mask, pooled = self.encode(missing)
            for i, p in enumerate(missing):
                self._cache[p] = (embeds[i], mask[i], None if pooled is None else pooled[i])
        cached = [self._cache[p] for p in prompts]
        pooled = None if cached[0][2] is None else torch.stack([c[2] for c in cached])
        return TextCond(torch.stack([c[0] for c in cached]), torch.stack([c[1] for c in cached]), pooled)


def _width(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", cfg)  # LLaVA wraps its language model's config
    return cfg.d_model if hasattr(cfg, "d_model") else cfg.hidden_size


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def _tokenize(tokenizer, prompts: list[str], max_length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    tok = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return tok.input_ids.to(device), tok.attention_mask.to(device)


def _clip_states(model: nn.Module, ids: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """A CLIP text model run as diffusers' SDXL / SD3 pipelines run it (no attention mask):
    (hidden states of ``layer``, the first output: ``text_embeds`` for the projection variant)."""
    out = model(ids, output_hidden_states=True)
    return out.hidden_states[layer], out[0]


class CLIPTextEncoder(TextEncoder):
    """SD 1.5 / ModelScope: ``CLIPTextModel``'s last hidden state (final layer norm applied) at all
    ``max_length`` (77) positions; the attention mask is passed to the encoder only if its config
    says ``use_attention_mask``, as in diffusers' ``StableDiffusionPipeline.encode_prompt``."""

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        ids, mask = _tokenize(self.tokenizer, prompts, self.max_length, self.device)
        use_mask = getattr(self.model.config, "use_attention_mask", False)
        hidden = self.model(ids, attention_mask=mask if use_mask else None)[0]
        return hidden, mask, None


class SDXLTextEncoder(TextEncoder):
    """SDXL: CLIP ViT-L (``CLIPTextModel``) and OpenCLIP ViT-bigG (``CLIPTextModelWithProjection``),
    each tokenized to its own 77 tokens; embeds = both penultimate hidden states concatenated on
    features (B,77,768+1280); pooled = the second encoder's ``text_embeds`` (B,1280).
    ``zero_empty_prompt`` (SDXL's ``force_zeros_for_empty_prompt``): the empty prompt, which is
    what ``uncond`` encodes, maps to all-zero embeds and pooled, as the pipeline's default negative."""

    def __init__(self, model: nn.Module, tokenizer, model_2: nn.Module, tokenizer_2, max_length: int = 77,
                 zero_empty_prompt: bool = True):
        super().__init__(model, tokenizer, max_length)
        self.model_2 = _frozen(model_2)
        self.tokenizer_2 = tokenizer_2
        self.zero_empty_prompt = zero_empty_prompt

    @property
    def dim(self) -> int:
        return _width(self.model) + _width(self.model_2)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        ids, mask = _tokenize(self.tokenizer, prompts, self.max_length, self.device)
        ids_2, _ = _tokenize(self.tokenizer_2, prompts, self.max_length, self.device)
        h1, _ = _clip_states(self.model, ids, -2)
        h2, pooled = _clip_states(self.model_2, ids_2, -2)
        embeds = torch.cat([h1, h2.to(h1.dtype)], dim=-1)
        if self.zero_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return embeds, mask, pooled


class SD3TextEncoder(TextEncoder):
    """SD3: CLIP-L and CLIP-G (both ``CLIPTextModelWithProjection``, 77 tokens, penultimate states,
    no attention mask) concatenated on features and zero-padded to T5's width, then T5-XXL's last
    hidden state (``max_length`` tokens, 256 by default, no attention mask) appended on the
    sequence: embeds B,77+256,4096. pooled = both CLIPs' ``text_embeds`` concatenated (B,768+1280).
    The mask is 1 on every CLIP position and on T5's real tokens (the transformer reads no mask)."""

    def __init__(self, model: nn.Module, tokenizer, model_2: nn.Module, tokenizer_2, model_3: nn.Module,
                 tokenizer_3, max_length: int = 256, clip_max_length: int = 77):
        super().__init__(model, tokenizer, max_length)
        self.model_2, self.tokenizer_2 = _frozen(model_2), tokenizer_2
        self.model_3, self.tokenizer_3 = _frozen(model_3), tokenizer_3
        self.clip_max_length = clip_max_length

    @property
    def dim(self) -> int:
        return _width(self.model_3)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        dev = self.device
        ids, _ = _tokenize(self.tokenizer, prompts, self.clip_max_length, dev)
        ids_2, _ = _tokenize(self.tokenizer_2, prompts, self.clip_max_length, dev)
        ids_3, mask_3 = _tokenize(self.tokenizer_3, prompts, self.max_length, dev)
        h1, p1 = _clip_states(self.model, ids, -2)
        h2, p2 = _clip_states(self.model_2, ids_2, -2)
        t5 = self.model_3(ids_3)[0]
        clip = torch.cat([h1, h2.to(h1.dtype)], dim=-1).to(t5.dtype)
        if clip.shape[-1] > t5.shape[-1]:
            raise ValueError(f"SD3 text encoders: the CLIP features ({clip.shape[-1]}) must not be wider than "
                             f"T5's ({t5.shape[-1]})")
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        mask = torch.cat([torch.ones_like(ids), mask_3], dim=1)
        return torch.cat([clip, t5], dim=1), mask, torch.cat([p1, p2.to(p1.dtype)], dim=-1)


# diffusers' HunyuanVideoPipeline prompt template (a fact of the model: it was trained with it)
# and the number of its tokens before the prompt under the LLaMA tokenizer (crop_start).
HUNYUAN_VIDEO_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
HUNYUAN_VIDEO_CROP_START = 95


class HunyuanVideoTextEncoder(TextEncoder):
    """HunyuanVideo: the prompt is put into ``template``, tokenized by the LLaMA tokenizer to
    ``crop_start + max_length`` tokens, run through the LLaMA with the attention mask, and the
    hidden states ``skip_layers + 1`` from the top are kept after cropping the template's first
    ``crop_start`` tokens: embeds B,max_length,4096 (padding not zeroed: the transformer reads the
    mask). pooled = CLIP-L's ``pooler_output`` on the bare prompt (77 tokens): B,768.
    ``crop_start=None`` counts the template's tokens before the prompt with this tokenizer (for
    tokenizers other than LLaMA's, such as the tiny models' byte tokenizer)."""

    def __init__(self, model: nn.Module, tokenizer, model_2: nn.Module, tokenizer_2, max_length: int = 256,
                 template: str = HUNYUAN_VIDEO_TEMPLATE, crop_start: int | None = HUNYUAN_VIDEO_CROP_START,
                 skip_layers: int = 2, clip_max_length: int = 77):
        super().__init__(model, tokenizer, max_length)
        self.model_2, self.tokenizer_2 = _frozen(model_2), tokenizer_2
        if "{}" not in template:
            raise ValueError(f"model.text_encoder.template must contain '{{}}' where the prompt goes, found {template!r}")
        self.template = template
        self.crop_start = _count_prefix_tokens(tokenizer, template) if crop_start is None else int(crop_start)
        self.skip_layers = skip_layers
        self.clip_max_length = clip_max_length

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        dev = self.device
        ids, mask = _tokenize(self.tokenizer, [self.template.format(p) for p in prompts],
                              self.crop_start + self.max_length, dev)
        hidden = self.model(input_ids=ids, attention_mask=mask,
                            output_hidden_states=True).hidden_states[-(self.skip_layers + 1)]
        ids_2, _ = _tokenize(self.tokenizer_2, prompts, self.clip_max_length, dev)
        pooled = self.model_2(ids_2, output_hidden_states=False).pooler_output
        return hidden[:, self.crop_start:], mask[:, self.crop_start:], pooled


def _count_prefix_tokens(tokenizer, template: str) -> int:
    """Tokens of ``template`` before its ``{}``, counting a leading BOS the tokenizer adds."""
    prefix = template.split("{}")[0]
    n = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    with_special = tokenizer(prefix).input_ids
    return n + int(bos is not None and len(with_special) > 0 and with_special[0] == bos)
