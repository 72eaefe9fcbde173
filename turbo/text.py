"""Frozen text encoders: prompts -> token embeddings the backbone cross-attends to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TextCond:
    """Text conditioning. ``embeds``: B,L,D float (padding positions zeroed, as Wan's pipeline
    does); ``mask``: B,L long (1 on real tokens)."""

    embeds: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(conds: list["TextCond"]) -> "TextCond":
        return TextCond(torch.cat([c.embeds for c in conds]), torch.cat([c.mask for c in conds]))

    def repeat(self, n: int) -> "TextCond":
        return TextCond(self.embeds.repeat(n, 1, 1), self.mask.repeat(n, 1))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextCond":
        return TextCond(self.embeds.to(device=device, dtype=dtype), self.mask.to(device))


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
