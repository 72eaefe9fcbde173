"""PickScore (Pick-a-Pic): a CLIP-H (transformers ``CLIPModel``) fine-tuned on human picks.

As in the official inference snippet (PickScore README, ``yuvalkirstain/PickScore_v1`` with
the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor):

    score(video, prompt) = mean over frames f of logit_scale.exp() * cos(E_img(video[f]), E_txt(prompt))

so scores are on the 100 x cosine scale (logit_scale.exp() is at most 100; about 20 for a
matching image). T2V-Turbo's ``get_pick_score_fn`` returns the bare cosine unless asked for
logits, and squashes frames to 224 x 224; weights tuned there differ by that factor.

Preprocessing equals ``CLIPImageProcessor`` as PickScore ran it (transformers 4.27, PIL): the
shorter side resized to ``size.shortest_edge`` with PIL bicubic on uint8 pixels, the longer
one to ``int(size * long / short)``, a ``crop_size`` centre crop anchored at
``(new - crop) // 2`` (torchvision rounds this anchor instead, so the open_clip helper can be
one pixel off), then OpenAI mean/std. ``match_pil`` (default on) reproduces PIL's resize on the
uint8 image bit for bit, with straight-through gradients; see ``rewards.base.preprocess_images``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import torch
from torch import Tensor, nn

from rewards.base import OPENAI_MEAN, OPENAI_STD, preprocess_images
from rewards.clip import CLIPReward
from rewards.loading import check_keys
from turbo.seeding import seeded

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds
    from transformers import CLIPConfig, PreTrainedTokenizerBase

# PIL resample codes in preprocessor_config.json -> torch modes (PIL: 2 bilinear, 3 bicubic).
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def processor_pixels(
    images: Tensor,
    resize: int,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    *,
    match_pil: bool = True,
) -> Tensor:
    """Differentiable ``CLIPImageProcessor``: shorter side to ``resize``, ``crop`` centre crop, normalise.

    images: N,3,H,W float in [0, 1] -> N,3,crop,crop float32. The crop anchor is
    ``(new - crop) // 2`` as in transformers. match_pil: resize the uint8 image
    ``round(255 * images)`` exactly as PIL does (see ``rewards.base.preprocess_images``);
    otherwise antialiased torch resampling of the float image, in one pass.
    """
    if crop > resize:  # (preprocess_images checks the images)
        raise ValueError(f"processor_pixels: crop ({crop}) larger than the resized shorter side ({resize}) is not supported")
    return preprocess_images(images, resize, mean, std, interpolation, match_pil=match_pil, crop=crop,
                             crop_anchor="floor")


class HFCLIPEncoders(nn.Module):
    """open_clip's ``encode_image`` / ``encode_text`` / ``visual`` interface over a transformers ``CLIPModel``.

    encode_image(pixels: N,3,S,S) -> N,D projected (unnormalised) features;
    encode_text(input_ids: N,L int64) -> N,D. No attention mask is needed: the text tower is
    causal and pools at the end-of-text token, so padding after it cannot change the result.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @property
    def visual(self) -> nn.Module:
        return self.clip.vision_model

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)

    def encode_text(self, input_ids: Tensor) -> Tensor:
        return self.clip.text_projection(self.clip.text_model(input_ids=input_ids).pooler_output)


class PickScoreReward(CLIPReward):
    """logit_scale.exp() x mean-over-frames cosine of a transformers CLIP (see the module docstring).

    forward(video: B,F,3,H,W float in [0, 1], prompts: B strings) -> B float32 scores,
    differentiable w.r.t. ``video``. ``tokenizer`` is a transformers CLIP tokenizer.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        resize: int = 224,
        crop: int = 224,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        interpolation: Literal["bicubic", "bilinear"] = "bicubic",
        match_pil: bool = True,
        name: str = "pickscore",
    ) -> None:
        max_length = clip.config.text_config.max_position_embeddings  # 77, as the official max_length

        def tokenize(prompts: list[str]) -> Tensor:
            return tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").input_ids

        super().__init__(HFCLIPEncoders(clip), tokenize, image_size=crop, mean=mean, std=std,
                         interpolation=interpolation, match_pil=match_pil, name=name)
        self.resize = int(resize)
        self.hf_tokenizer = tokenizer

    def preprocess(self, images: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,3,crop,crop float32, as ``CLIPImageProcessor``."""
        return processor_pixels(images, self.resize, self.image_size, self.mean, self.std,
                                self.interpolation, match_pil=self.match_pil)

    def forward(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1]; prompts: B strings -> B float32 logit_scale.exp() x mean cosines."""
        return self.model.clip.logit_scale.exp().float() * super().forward(video, prompts)


def read_processor_config(folder: str | os.PathLike, *, who: str, key: str) -> dict:
    """resize, crop, mean, std, interpolation from a CLIP ``preprocessor_config.json`` (old or new format)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{who}: {str(path)!r} not found (config key {key}); PickScore uses the processor of "
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K: point processor_path at a local copy of it"
        )
    cfg = json.loads(path.read_text())
    size, crop = cfg.get("size", 224), cfg.get("crop_size", 224)
    size = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    resample = cfg.get("resample", 3)
    ok = (
        isinstance(size, int) and crop[0] == crop[1] and isinstance(crop[0], int)
        and all(cfg.get(k, True) for k in ("do_resize", "do_center_crop", "do_normalize", "do_rescale"))
        and abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) < 1e-9 and resample in _RESAMPLE
    )
    if not ok:
        raise ValueError(
            f"{who}: {str(path)!r} (config key {key}) is not a CLIP processor this reward implements "
            "(expected shortest-edge resize, square centre crop, rescale 1/255, normalise, bicubic or bilinear)"
        )
    return {
        "resize": size,
        "crop": crop[0],
        "mean": tuple(cfg.get("image_mean", OPENAI_MEAN)),
        "std": tuple(cfg.get("image_std", OPENAI_STD)),
        "interpolation": _RESAMPLE[resample],
    }


def pickscore_reward(
    path: str,
    processor_path: str | None = None,
    name: str = "pickscore",
    match_pil: bool = True,
) -> PickScoreReward:
    """PickScore from a local ``PickScore_v1`` folder (config.json + weights), never downloading.

    ``processor_path``: a local folder with the tokenizer files and ``preprocessor_config.json``
    (the official code takes them from laion/CLIP-ViT-H-14-laion2B-s32B-b79K); default ``path``.
    Every weight must be in the checkpoint: missing, unexpected or mis-shaped keys raise
    :class:`rewards.loading.CheckpointMismatchError` (transformers would re-initialise them).
    """
    from transformers import AutoTokenizer, CLIPModel

    who, key = f"reward '{name}'", f"reward.{name}.model.path"
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{who}: no config.json in {path!r}; set {key}= to a local PickScore_v1 folder")
    proc_dir = processor_path or path
    proc_key = f"reward.{name}.model.processor_path" if processor_path else key
    processor = read_processor_config(proc_dir, who=who, key=proc_key)
    clip, info = CLIPModel.from_pretrained(
        path, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True, dtype=torch.float32
    )
    check_keys(info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"], path=path, key=key, who=who)
    tokenizer = AutoTokenizer.from_pretrained(proc_dir, local_files_only=True)
    return PickScoreReward(clip, tokenizer, match_pil=match_pil, name=name, **processor)


def openai_clip_tokenizer() -> PreTrainedTokenizerBase:
    """The OpenAI CLIP BPE tokenizer (as used by laion/CLIP-ViT-H-14) as a transformers ``CLIPTokenizer``.

    Built offline from the vocabulary file shipped inside open_clip: the same 49408 tokens and
    merges, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407 (also the padding token).
    """
    import gzip

    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    encoder = dict(SimpleTokenizer().encoder)
    # open_clip names the special tokens differently; the ids are the same.
    encoder["<|startoftext|>"] = encoder.pop("<start_of_text>")
    encoder["<|endoftext|>"] = encoder.pop("<end_of_text>")
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(encoder))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def tiny_clip_config(image_size: int = 32, width: int = 32, layers: int = 2, heads: int = 2,
                     patch_size: int = 8, projection_dim: int = 32, context_length: int = 32) -> CLIPConfig:
    """A tiny transformers ``CLIPConfig`` (OpenAI vocabulary, GELU as CLIP-H) for tests and the toy world."""
    from transformers import CLIPConfig

    common = dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads,
                  num_hidden_layers=layers, hidden_act="gelu")
    return CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=context_length, **common),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **common),
        projection_dim=projection_dim,
    )


def tiny_pickscore_reward(seed: int = 0, image_size: int = 32, name: str = "pickscore", match_pil: bool = True) -> PickScoreReward:
    """:class:`PickScoreReward` over a seeded, randomly initialised tiny ``CLIPModel`` (offline, CPU).

    The global torch RNG is left untouched. Resize and crop are both ``image_size``.
    """
    from transformers import CLIPModel

    clip = seeded(seed, lambda: CLIPModel(tiny_clip_config(image_size=image_size)))
    return PickScoreReward(clip, openai_clip_tokenizer(), resize=image_size, crop=image_size, match_pil=match_pil, name=name)
