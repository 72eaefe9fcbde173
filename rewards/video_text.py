"""Video-text dual-encoder rewards (ViCLIP, InternVideo2): preprocessing and the reward wrapper.

score(video, prompt) = cos(E_video(preprocess(video)), E_text(prompt))

Unlike the image rewards, the clip is scored as a whole: the video encoder attends over
all frames at once, so it can see motion. The video side is differentiable end to end;
text features are computed without gradients and cached per prompt string.

Preprocessing follows the reference pipelines: InternVid's and InternVideo2's dataset test
transforms squash each uint8 frame to S x S with ``transforms.Resize((S, S), BICUBIC)``
(torchvision 0.14 in InternVideo2's requirements, where tensor resizing did not antialias),
then divide by 255 and normalise with ImageNet statistics. (The InternVid demo uses
cv2.resize, bilinear, also squashing; T2V-Turbo resizes the shorter side and takes a
random crop, which would make the reward stochastic: not reproduced.)
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from rewards.base import (DualEncoderReward, RewardInputError, Tokenizer, check_video, image_batch,  # noqa: F401
                          round_straight_through, to_uint8_levels)

# ImageNet statistics: the InternVid / InternVideo2 datasets normalise "vit" / "internvideo" encoders with these.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Interpolation = Literal["bicubic", "bilinear"]


def preprocess_frames(
    images: Tensor,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    interpolation: Interpolation = "bicubic",
    antialias: bool = False,
    match_uint8: bool = True,
) -> Tensor:
    """Differentiable frame preprocessing: squash to size x size, normalise.

    images: N,3,H,W float in [0, 1] (any float dtype) -> N,3,size,size float32, (x - mean) / std.
    The aspect ratio is not kept, as in the reference transforms.

    ``match_uint8=True`` (default) reproduces the reference on the uint8 frames
    ``round(255 * images)``: torchvision's ``Resize((size, size), interpolation, antialias)`` on
    a uint8 tensor resamples in float32, clamps to 0..255 and rounds, then the reference divides
    by 255 and normalises; the forward pass here does exactly that, so it is bit-exact with the
    reference on the same device. Backward: straight-through for both roundings, the gradient of
    the float resize otherwise; pixels clamped to 0 or 255 pass no gradient.
    ``match_uint8=False`` equals torchvision ``Resize + Normalize`` on the float frames.
    ``antialias=False`` (default) is how the references ran; set True when downscaling by
    much more than 2x, where the 4-tap kernel leaves pixels that get no gradient.
    """
    x = image_batch(images, interpolation, who="preprocess_frames")
    resize = tuple(x.shape[-2:]) != (size, size)  # torchvision skips the no-op resize too
    if match_uint8:
        x = to_uint8_levels(x)  # integers 0..255, as the reference's uint8 frames
        if resize:
            x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=antialias)
            x = round_straight_through(x.clamp(0, 255))  # torchvision's uint8 output: clamp, round
        x = x / 255
    elif resize:
        x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=antialias)
    return TF.normalize(x, list(mean), list(std))


class VideoTextReward(DualEncoderReward):
    """A frozen video-text dual encoder scoring whole clips by cosine similarity.

    forward(video: B,F,3,H,W float in [0, 1], prompts: B strings) -> B float32 scores in
    [-1, 1], differentiable w.r.t. ``video``. F must equal ``num_frames``: the encoders'
    temporal position embeddings have exactly that many slots, and the reference code
    fails on any other count; which frames to score is the mixture's job (``frames``,
    ``stride``), as frames2tensor's strided sampling is in the InternVid demo.
    Parameters never require grad; the model stays in eval mode.
    """

    kind: Literal["video"] = "video"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        num_frames: int,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: Interpolation = "bicubic",
        antialias: bool = False,
        match_uint8: bool = True,
        name: str,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"reward '{name}': num_frames must be >= 1, found {num_frames}")
        super().__init__(model, tokenizer, image_size=image_size, mean=mean, std=std, interpolation=interpolation,
                         name=name)
        self.num_frames = int(num_frames)
        self.antialias = antialias
        self.match_uint8 = match_uint8  # see preprocess_frames

    @classmethod
    def of(cls, model: nn.Module, tokenizer: Tokenizer, *, name: str, antialias: bool = False,
           gradient_checkpointing: bool = False) -> "VideoTextReward":
        """The reward over a ViCLIP / InternVideo2 ``model``, its frame count and size read from ``model.config``."""
        model.set_gradient_checkpointing(gradient_checkpointing)
        cfg = model.config
        return cls(model, tokenizer, num_frames=cfg.num_frames, image_size=cfg.image_size, antialias=antialias, name=name)

    def video_features(self, video: Tensor) -> Tensor:
        """B,F,3,H,W float in [0, 1] -> B,D float32 L2-normalised video features (with grad)."""
        batch, frames = video.shape[:2]
        pixels = preprocess_frames(
            video.flatten(0, 1), self.image_size, self.mean, self.std,
            interpolation=self.interpolation, antialias=self.antialias, match_uint8=self.match_uint8,
        ).unflatten(0, (batch, frames))
        dtype = next(self.model.parameters()).dtype  # fp16/bf16 weights want matching input
        return F.normalize(self.model.encode_video(pixels.to(dtype)).float(), dim=-1)

    def forward(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1] with F == num_frames; prompts: B strings -> B float32 cosines."""
        who = f"reward '{self.name}'"
        check_video(video, prompts, who=who)
        if video.shape[1] != self.num_frames:
            raise RewardInputError(
                f"{who}: expected exactly {self.num_frames} frames per video (the model has "
                f"{self.num_frames} temporal position slots; set the term's frames to {self.num_frames}), "
                f"found {video.shape[1]}"
            )
        return (self.video_features(video) * self.text_features(prompts)).sum(-1)
