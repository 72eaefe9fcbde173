"""Frozen text encoders: prompts -> token embeddings the backbone cross-attends to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TextCond:
    """The conditioning a backbone gets besides (x_t, t).

    ``embeds``: B,L,D float token embeddings (padding positions zeroed, as Wan's pipeline does);
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
    """A frozen transformers encoder plus its tokenizer. Embeddings are cached per prompt:
    the encoder is frozen, so a prompt always maps to the same tensor."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # always frozen

    @property
    def dim(self) -> int:
        return self.model.config.d_model if hasattr(self.model.config, "d_model") else self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextCond:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, found {type(prompts).__name__}")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", max_length=self.max_length,
                                 truncation=True, return_tensors="pt")
            device = next(self.model.parameters()).device
            ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
            for p, h, m in zip(missing, hidden, mask):
                self._cache[p] = (h, m)
        return TextCond(torch.stack([self._cache[p][0] for p in prompts]),
                        torch.stack([self._cache[p][1] for p in prompts]))
