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

The network (BLIP towers, head, the official key layout) is rewards/image_reward_model.py.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rewards.base import OPENAI_MEAN, OPENAI_STD, FrozenReward, check_video, preprocess_images
from rewards.image_reward_model import (SIZES, ImageRewardConfig, ImageRewardModel, load_image_reward_model,
                                        tiny_image_reward_model)
from rewards.internvideo2 import load_bert_tokenizer, tiny_bert_tokenizer

# T2V-Turbo's hinge: -relu(RELU_TARGET - r).
RELU_TARGET = 2.0
# BLIP's init_tokenizer adds these after bert-base-uncased's 30522 tokens.
BLIP_EXTRA_TOKENS = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]}


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
