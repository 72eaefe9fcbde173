"""Frozen text encoders: prompts -> token embeddings the backbone cross-attends to.

One encoder class per family, each calling its diffusers pipeline's own ``encode_prompt`` (the
pipeline built with only its text components), all frozen and cached per prompt:

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
import inspect
from dataclasses import dataclass

import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE as HUNYUAN_TEMPLATE
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
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return TextCond(**{k: None if v is None else fn(k, v) for k, v in values.items()})

    @staticmethod
    def cat(conds: list["TextCond"]) -> "TextCond":
        values = []
        for name in (f.name for f in dataclasses.fields(TextCond)):
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
    """A frozen text encoder plus its tokenizer, encoding prompts exactly as its family's diffusers
    pipeline does: the pipeline itself (``pipeline_class``, holding only the text components) runs
    its ``encode_prompt``. This class is the T5 / UMT5 layout of ``WanPipeline`` (last hidden state,
    padding positions zeroed). Embeddings are cached per prompt: the encoder is frozen, so a prompt
    always maps to the same tensors. Subclasses for other families set ``pipeline_class`` and
    ``encode``."""

    pipeline_class = "WanPipeline"

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = _frozen(model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._cache: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
        self._pipe = None

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # always frozen

    @property
    def dim(self) -> int:
        """Width D of ``embeds``."""
        return _width(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def components(self) -> dict:
        """The pipeline's text components (the same module objects this encoder holds)."""
        return {"text_encoder": self.model, "tokenizer": self.tokenizer}

    @property
    def pipeline(self):
        """The family's diffusers pipeline with only the text components (the others None)."""
        if self._pipe is None:
            import diffusers

            cls = getattr(diffusers, self.pipeline_class)
            names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
            parts = self.components()
            self._pipe = cls(**{n: parts.get(n) for n in names if n in parts or _required(cls, n)})
        return self._pipe

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """prompts -> (embeds B,L,D, mask B,L long, pooled B,P or None), uncached."""
        embeds, _ = self.pipeline.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                max_sequence_length=self.max_length, device=self.device)
        return embeds, _tokenize(self.tokenizer, prompts, self.max_length, self.device)[1], None

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


def _required(cls, name: str) -> bool:
    """Whether ``cls.__init__`` has no default for ``name`` (then it is passed as None)."""
    return inspect.signature(cls.__init__).parameters[name].default is inspect.Parameter.empty


def _width(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", cfg)  # LLaVA wraps its language model's config
    return cfg.d_model if hasattr(cfg, "d_model") else cfg.hidden_size


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def _tokenize(tokenizer, prompts: list[str], max_length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    tok = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return tok.input_ids.to(device), tok.attention_mask.to(device)


class CLIPTextEncoder(TextEncoder):
    """SD 1.5 / ModelScope: ``CLIPTextModel``'s last hidden state (final layer norm applied) at all
    ``max_length`` (77) positions, through ``TextToVideoSDPipeline.encode_prompt`` (the attention
    mask reaches the encoder only if its config says ``use_attention_mask``)."""

    pipeline_class = "TextToVideoSDPipeline"

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        embeds, _ = self.pipeline.encode_prompt(prompts, self.device, 1, False)
        return embeds, _tokenize(self.tokenizer, prompts, self.max_length, self.device)[1], None


class SDXLTextEncoder(TextEncoder):
    """SDXL (``StableDiffusionXLPipeline.encode_prompt``): CLIP ViT-L and OpenCLIP ViT-bigG, each
    tokenized to its own 77 tokens; embeds = both penultimate hidden states concatenated on features
    (B,77,768+1280); pooled = the second encoder's ``text_embeds`` (B,1280). ``zero_empty_prompt``
    (SDXL's ``force_zeros_for_empty_prompt``): the empty prompt, which is what ``uncond`` encodes,
    maps to all-zero embeds and pooled, as the pipeline's default negative does."""

    pipeline_class = "StableDiffusionXLPipeline"

    def __init__(self, model: nn.Module, tokenizer, model_2: nn.Module, tokenizer_2, max_length: int = 77,
                 zero_empty_prompt: bool = True):
        super().__init__(model, tokenizer, max_length)
        self.model_2 = _frozen(model_2)
        self.tokenizer_2 = tokenizer_2
        self.zero_empty_prompt = zero_empty_prompt

    @property
    def dim(self) -> int:
        return _width(self.model) + _width(self.model_2)

    def components(self) -> dict:
        return {**super().components(), "text_encoder_2": self.model_2, "tokenizer_2": self.tokenizer_2}

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(prompts, device=self.device,
                                                           do_classifier_free_guidance=False)
        if self.zero_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return embeds, _tokenize(self.tokenizer, prompts, self.max_length, self.device)[1], pooled


class SD3TextEncoder(TextEncoder):
    """SD3 (``StableDiffusion3Pipeline.encode_prompt``): CLIP-L and CLIP-G penultimate states (77
    tokens) concatenated on features and zero-padded to T5's width, then T5-XXL's last hidden state
    (``max_length`` tokens, 256 by default) on the sequence: embeds B,77+256,4096; pooled = both
    CLIPs' ``text_embeds`` (B,768+1280). The mask is 1 on every CLIP position and on T5's real
    tokens (the transformer reads no mask)."""

    pipeline_class = "StableDiffusion3Pipeline"

    def __init__(self, model: nn.Module, tokenizer, model_2: nn.Module, tokenizer_2, model_3: nn.Module,
                 tokenizer_3, max_length: int = 256, clip_max_length: int = 77):
        super().__init__(model, tokenizer, max_length)
        self.model_2, self.tokenizer_2 = _frozen(model_2), tokenizer_2
        self.model_3, self.tokenizer_3 = _frozen(model_3), tokenizer_3
        self.clip_max_length = clip_max_length

    @property
    def dim(self) -> int:
        return _width(self.model_3)

    def components(self) -> dict:
        return {**super().components(), "text_encoder_2": self.model_2, "tokenizer_2": self.tokenizer_2,
                "text_encoder_3": self.model_3, "tokenizer_3": self.tokenizer_3}

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(prompts, None, None, device=self.device,
                                                           do_classifier_free_guidance=False,
                                                           max_sequence_length=self.max_length)
        t5_mask = _tokenize(self.tokenizer_3, prompts, self.max_length, self.device)[1]
        return embeds, torch.cat([torch.ones_like(t5_mask[:, :1]).expand(-1, self.clip_max_length), t5_mask], 1), pooled


class HunyuanVideoTextEncoder(TextEncoder):
    """HunyuanVideo (``HunyuanVideoPipeline.encode_prompt``): the prompt is put into ``template``,
    run through the LLaMA, and the hidden states ``skip_layers + 1`` from the top are kept after
    cropping the template's first ``crop_start`` tokens: embeds B,max_length,4096 (padding not
    zeroed: the transformer reads the mask). pooled = CLIP-L's ``pooler_output`` on the bare prompt.
    ``template`` / ``crop_start`` default to diffusers' ``DEFAULT_PROMPT_TEMPLATE`` (a fact of the
    model: it was trained with it); ``crop_start=None`` counts the template's tokens before the
    prompt with this tokenizer (for tokenizers other than LLaMA's, such as the tiny models')."""

    pipeline_class = "HunyuanVideoPipeline"

    def __init__(self, model: nn.Module, tokenizer, model_2: nn.Module, tokenizer_2, max_length: int = 256,
                 template: str = HUNYUAN_TEMPLATE["template"], crop_start: int | None = HUNYUAN_TEMPLATE["crop_start"],
                 skip_layers: int = 2, clip_max_length: int = 77):
        super().__init__(model, tokenizer, max_length)
        self.model_2, self.tokenizer_2 = _frozen(model_2), tokenizer_2
        if "{}" not in template:
            raise ValueError(f"model.text_encoder.template must contain '{{}}' where the prompt goes, found {template!r}")
        self.template = template
        self.crop_start = _count_prefix_tokens(tokenizer, template) if crop_start is None else int(crop_start)
        self.skip_layers = skip_layers
        self.clip_max_length = clip_max_length

    def components(self) -> dict:
        return {**super().components(), "text_encoder_2": self.model_2, "tokenizer_2": self.tokenizer_2}

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        # the two calls encode_prompt makes, with the layer-skip it does not pass through
        embeds, mask = self.pipeline._get_llama_prompt_embeds(
            prompts, {"template": self.template, "crop_start": self.crop_start}, device=self.device,
            max_sequence_length=self.max_length, num_hidden_layers_to_skip=self.skip_layers)
        pooled = self.pipeline._get_clip_prompt_embeds(prompts, device=self.device, max_sequence_length=self.clip_max_length)
        return embeds, mask.long(), pooled


def _count_prefix_tokens(tokenizer, template: str) -> int:
    """Tokens of ``template`` before its ``{}``, counting a leading BOS the tokenizer adds."""
    prefix = template.split("{}")[0]
    n = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    with_special = tokenizer(prefix).input_ids
    return n + int(bos is not None and len(with_special) > 0 and with_special[0] == bos)
