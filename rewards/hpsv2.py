"""HPSv2 / HPSv2.1 (Human Preference Score v2): the image-text reward T2V-Turbo trains with.

An open_clip ViT-H-14 fine-tuned on human preferences; the checkpoint
(``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``) is a full open_clip state dict under
``"state_dict"``. As in the official ``hpsv2.score`` and in T2V-Turbo's ``get_hpsv2_fn``:

    score(video, prompt) = mean over frames f of cos(E_img(pad(video[f])), E_txt(prompt))

a bare cosine: no ``logit_scale`` (the official evaluation multiplies by ``logit_scale`` only to
rank images, and prints benchmark tables as 100 x the mean cosine).

Preprocessing. The official scorer builds its transforms with ``light_augmentation=True``,
which makes its validation transform ``ToTensor -> ResizeMaxSize(224) -> Normalize``: the
*longer* side is resized to 224 with torchvision's bicubic resize on the float tensor (not
PIL), sizes rounded with ``round()``, and the image is zero-padded (black, before
normalising) to 224 x 224. T2V-Turbo applies the same two tensor transforms to decoded frames.
That is ``resize_mode="pad"`` here, and it matches the official transform to float precision.
``resize_mode="crop"`` is the fork's other validation transform (shorter side to 224, centre
crop; also on tensors). With torchvision >= 0.17 tensor resizes antialias, as here; the
torchvision of 2023, when HPSv2 was released, did not antialias tensor resizes.
"""

from __future__ import annotations

from typing import Literal, Sequence

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

from rewards.base import OPENAI_MEAN, OPENAI_STD, image_batch, preprocess_images
from rewards.clip import CLIPReward, Tokenizer, tiny_clip_model
from rewards.loading import load_checkpoint_into

ResizeMode = Literal["pad", "crop"]


def resize_longest_and_pad(
    images: Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
) -> Tensor:
    """Differentiable HPSv2 ``ResizeMaxSize``: longer side to ``size``, zero-pad to square, normalise.

    images: N,3,H,W float in [0, 1] -> N,3,size,size float32. New sizes are ``round(dim * scale)``;
    the pad (value 0, i.e. black before normalising) is split left/top = pad // 2. Equals
    torchvision ``F.resize(img, new_size, BICUBIC, antialias=True)`` + ``F.pad(..., fill=0)`` +
    ``Normalize`` on float tensors. Unlike the official transform, an image whose longer side
    already equals ``size`` is still padded to a square (the official one would hand the ViT a
    non-square image and fail).
    """
    x = image_batch(images, interpolation, who="resize_longest_and_pad")
    height, width = x.shape[-2:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = (round(height * scale), round(width * scale))
        x = F.interpolate(x, size=new_size, mode=interpolation, align_corners=False, antialias=True)
    pad_h, pad_w = size - x.shape[-2], size - x.shape[-1]
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return TF.normalize(x, list(mean), list(std))


class HPSv2Reward(CLIPReward):
    """:class:`CLIPReward` with HPSv2's preprocessing (``resize_mode``, see the module docstring).

    forward(video: B,F,3,H,W float in [0, 1], prompts: B strings) -> B float32 mean-over-frames
    cosines in [-1, 1], differentiable w.r.t. ``video``.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, image_size: int,
                 resize_mode: ResizeMode = "pad", name: str = "hpsv2") -> None:
        if resize_mode not in ("pad", "crop"):
            raise ValueError(f"reward '{name}': resize_mode must be 'pad' or 'crop', found {resize_mode!r}")
        # HPSv2 preprocesses tensors with torchvision, never with PIL: no match_pil.
        super().__init__(model, tokenizer, image_size=image_size, mean=OPENAI_MEAN, std=OPENAI_STD, name=name)
        self.resize_mode = resize_mode

    def preprocess(self, images: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,3,S,S float32 normalised pixels, as the official transform."""
        if self.resize_mode == "pad":
            return resize_longest_and_pad(images, self.image_size, self.mean, self.std, self.interpolation)
        return preprocess_images(images, self.image_size, self.mean, self.std, self.interpolation)


def hpsv2_model(arch: str = "ViT-H-14", *, device: str | torch.device = "cpu") -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` of ``arch`` (the HPSv2 layout), weights loaded separately.

    Build it under ``with torch.device("meta"):`` with ``device="meta"`` to inspect the full-size
    layout without allocating it.
    """
    if ":" in arch:  # 'hf-hub:...' / 'local-dir:...' would fetch configs
        raise ValueError(f"HPSv2: arch must be a built-in open_clip name such as 'ViT-H-14', found {arch!r}")
    return open_clip.create_model(arch, pretrained=None, load_weights=False, device=device)


def hpsv2_reward(
    checkpoint: str,
    arch: str = "ViT-H-14",
    name: str = "hpsv2",
    resize_mode: ResizeMode = "pad",
    allow_pickle: bool = False,
) -> HPSv2Reward:
    """HPSv2 / HPSv2.1 from a local checkpoint, e.g. ``hpsv2_reward("/ckpts/HPS_v2.1_compressed.pt")``.

    The checkpoint must hold every weight of ``arch`` (checked key by key; errors name the
    config key ``reward.<name>.model.checkpoint``). Image size comes from the model (224 for
    ViT-H-14); mean/std are OpenAI's.
    """
    who = f"reward '{name}'"
    model = hpsv2_model(arch)
    load_checkpoint_into(model, checkpoint, key=f"reward.{name}.model.checkpoint", who=who, allow_pickle=allow_pickle)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return HPSv2Reward(model, open_clip.get_tokenizer(arch), image_size=int(size), resize_mode=resize_mode, name=name)


def tiny_hpsv2_reward(
    seed: int = 0,
    image_size: int = 32,
    checkpoint: str | None = None,
    name: str = "hpsv2",
    resize_mode: ResizeMode = "pad",
    allow_pickle: bool = False,
) -> HPSv2Reward:
    """:class:`HPSv2Reward` over the seeded tiny open_clip model of ``rewards.clip`` (offline, CPU)."""
    model = tiny_clip_model(seed, image_size=image_size)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, key=f"reward.{name}.model.checkpoint", who=f"reward '{name}'",
                             allow_pickle=allow_pickle)
    tokenizer = SimpleTokenizer(context_length=model.context_length)
    return HPSv2Reward(model, tokenizer, image_size=image_size, resize_mode=resize_mode, name=name)
