"""InternVideo2-S2 (stage-2 CLIP-style video-text model) reward: our implementation (the architecture
is in rewards/internvideo2_model.py; this file is the reward, its tokenizer and loading).

score = cos(vision_proj(pool(ViT(video))), text_proj(BERT(prompt)[CLS]))

Vision (InternVideo2-1B, ``PretrainInternVideo2`` in the reference): Conv3d patch
embedding 14 x 14 with temporal kernel 1 (with bias), a CLS token, one learned position
embedding over CLS + T x 16 x 16 tokens (frame-major), 40 pre-norm blocks of width 1408
(16 heads, RMSNorm eps 1e-6, RMS-normalised q and k, LayerScale, GELU MLP 6144), then
attention pooling (``clip_projector``: the mean token attends over all tokens, LayerNorm
eps 1e-5, 16 heads) to 768, ``vision_proj`` to 512. Text: BERT-large (uncased, 40 tokens
padded to max length); the stage-2 text encoder runs its first ``fusion_layer`` = 19
layers only (xbert ``mode="text"``), takes the CLS state and ``text_proj`` maps it to 512.

Key layout (official ``InternVideo2-stage2_1b-224p-f4.pt``, state dict under ``['model']``
or ``['module']``): our names equal the checkpoint's for everything the score needs, no
renames: ``vision_encoder.{cls_token, pos_embed, patch_embed.proj, blocks.N.*,
clip_projector.*}``, ``vision_proj``, ``text_encoder.bert.{embeddings, encoder.layer.0-18}.*``
(transformers' ``BertModel`` uses xbert's names), ``text_proj``. The checkpoint's other
172 entries are not needed for the score and are skipped: the UMT distillation heads
(``vision_encoder.clip_decoder.*``, ``final_clip_decoder.*``, ``clip_pos_embed``,
``clip_img_pos_embed``), the image position table ``img_pos_embed`` (single images only),
the fusion layers 19-23 (cross-attention to the video), the MLM head ``text_encoder.cls.*``,
``embeddings.position_ids``, ``itm_head`` and ``temp``. The layouts are written down in
tests/rewards/data/internvideo2_keys.json.

The reference runs with flash-attention / fused kernels during training (tanh-approximate
GELU in FusedMLP); its demo and T2V-Turbo's reward run the plain path (exact GELU), which
is what this file implements.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Literal

from torch import Tensor

from rewards.internvideo2_model import (  # noqa: F401 (re-exported: the architecture lives there)
    SIZES, TINY_VOCAB, InternVideo2, InternVideo2Config, resample_temporal_pos_embed,
)
from rewards.loading import load_checkpoint_into
from rewards.video_text import VideoTextReward
from turbo.seeding import seeded

# Entries of the official checkpoint that the score does not use (exact names, or prefixes
# ending in "."; see the module docstring). The fusion layers are added per config.
UNUSED_KEYS: tuple[str, ...] = (
    "vision_encoder.clip_decoder.",
    "vision_encoder.final_clip_decoder.",
    "vision_encoder.clip_pos_embed",
    "vision_encoder.clip_img_pos_embed",
    "vision_encoder.img_pos_embed",
    "text_encoder.cls.",
    "text_encoder.bert.embeddings.position_ids",
    "itm_head.",
    "temp",
)
BERT_LARGE_LAYERS = 24  # layers in the checkpoint's text encoder; those past text_layers fuse video


def bert_tokenize(tokenizer, max_length: int, prompts: list[str]) -> dict[str, Tensor]:
    """prompts -> {"input_ids", "attention_mask"}: B,max_length int64, padded to max_length, truncated."""
    enc = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def tiny_bert_tokenizer():
    """A WordPiece tokenizer over :data:`TINY_VOCAB` (lower-cases; no files, no network)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(TINY_VOCAB)})


def load_bert_tokenizer(path: str | os.PathLike, *, name: str = "internvideo2"):
    """bert-large-uncased's tokenizer from a local folder (vocab.txt and/or tokenizer.json) or its
    vocab.txt; never downloads. Lower-cases, as the reference's BertTokenizer for *-uncased."""
    from transformers import BertTokenizer

    path = Path(path)
    if path.is_dir():
        return BertTokenizer.from_pretrained(str(path), local_files_only=True)
    if path.is_file():
        return BertTokenizer(vocab=str(path), do_lower_case=True)
    raise FileNotFoundError(
        f"reward '{name}': BERT tokenizer {str(path)!r} not found; set reward.{name}.model.tokenizer_path "
        "to a local bert-*-uncased folder or its vocab.txt (nothing is downloaded)"
    )


def tiny_internvideo2_model(seed: int = 0, **changes) -> InternVideo2:
    """A seeded random :func:`InternVideo2Config.tiny` model; the global torch RNG is left untouched."""
    config = InternVideo2Config.tiny(**changes)
    return seeded(seed, lambda: InternVideo2(config))


def unused_checkpoint_keys(config: InternVideo2Config) -> tuple[str, ...]:
    """Checkpoint entries :func:`load_internvideo2` skips: :data:`UNUSED_KEYS` and the fusion layers."""
    fusion = tuple(f"text_encoder.bert.encoder.layer.{i}." for i in range(config.text_layers, BERT_LARGE_LAYERS))
    return UNUSED_KEYS + fusion


def load_internvideo2(
    checkpoint: str | os.PathLike, config: InternVideo2Config, *, checkpoint_frames: int | None = None,
    name: str = "internvideo2", allow_pickle: bool = False,
) -> InternVideo2:
    """An :class:`InternVideo2` of ``config`` with the score-path weights of a local official-format
    checkpoint (state dict at the top level or under ``model`` / ``module``).

    checkpoint_frames: the frame count the checkpoint's ``vision_encoder.pos_embed`` was trained
    for (4 for ``...-224p-f4.pt``; None: ``config.num_frames``). When it differs from
    ``config.num_frames`` the table is resampled in time after loading, as the reference does.
    The keys of :func:`unused_checkpoint_keys` are skipped; every other key must match.
    """
    frames = config.num_frames if checkpoint_frames is None else checkpoint_frames
    model = InternVideo2(replace(config, num_frames=frames))
    load_checkpoint_into(
        model, checkpoint, key=f"reward.{name}.model.checkpoint", who=f"reward '{name}'",
        ignore=unused_checkpoint_keys(config), allow_pickle=allow_pickle,
    )
    model.set_num_frames(config.num_frames)
    return model


def internvideo2_reward(
    checkpoint: str,
    tokenizer_path: str,
    num_frames: int = 4,
    checkpoint_frames: int = 4,
    gradient_checkpointing: bool = False,
    name: str = "internvideo2",
    size: Literal["1B", "tiny"] = "1B",
    antialias: bool = False,
    allow_pickle: bool = False,
) -> VideoTextReward:
    """The InternVideo2-S2 reward from local files, e.g. ``/ckpts/InternVideo2-stage2_1b-224p-f4.pt``
    and a ``bert-large-uncased`` tokenizer folder (or its vocab.txt).

    num_frames: frames per scored clip, 4 (as trained) or 8 (T2V-Turbo v2's setting; the position
    table is resampled in time). checkpoint_frames: what the checkpoint was trained on (f4: 4).
    size: "1B" (official) or "tiny" (tests; with a vocab.txt of :data:`TINY_VOCAB`). antialias: see :func:`rewards.video_text.preprocess_frames`.
    """
    if size not in SIZES:
        raise ValueError(f"reward '{name}': size must be one of {sorted(SIZES)}, found {size!r}")
    config = SIZES[size](num_frames=num_frames)
    tokenizer = load_bert_tokenizer(tokenizer_path, name=name)
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"reward '{name}': the tokenizer at {tokenizer_path!r} has {len(tokenizer)} tokens, the {size} text "
            f"encoder {config.vocab_size}; InternVideo2-S2 1B uses bert-large-uncased (30522)"
        )
    model = load_internvideo2(checkpoint, config, checkpoint_frames=checkpoint_frames, name=name, allow_pickle=allow_pickle)
    tokenize = partial(bert_tokenize, tokenizer, config.max_text_length)
    return VideoTextReward.of(model, tokenize, name=name, antialias=antialias, gradient_checkpointing=gradient_checkpointing)


def tiny_internvideo2_reward(
    seed: int = 0,
    num_frames: int = 4,
    checkpoint: str | None = None,
    gradient_checkpointing: bool = False,
    name: str = "internvideo2",
    antialias: bool = False,
) -> VideoTextReward:
    """A :class:`VideoTextReward` over :func:`tiny_internvideo2_model` with :func:`tiny_bert_tokenizer`,
    or over the weights of a tiny checkpoint in the official layout. Fully offline."""
    if checkpoint is not None:
        model = load_internvideo2(checkpoint, InternVideo2Config.tiny(num_frames=num_frames), name=name)
    else:
        model = tiny_internvideo2_model(seed, num_frames=num_frames)
    tokenize = partial(bert_tokenize, tiny_bert_tokenizer(), model.config.max_text_length)
    return VideoTextReward.of(model, tokenize, name=name, antialias=antialias, gradient_checkpointing=gradient_checkpointing)
