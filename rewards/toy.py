"""Toy rewards: an image-text and a video-text contrastive model of the toy world, shipped trained.

The toy experiment mixes them as T2V-Turbo mixes HPSv2.1 and a video-text model
(``conf/reward/toy.yaml``). Both are CLIP-style dual encoders over the toy vocabulary
(``turbo.toy.vocab.VOCAB``, one token per word):

- :class:`ToyImageText` (kind "image") scores each frame on its own: a small CNN over one
  32x32 frame. A single frame shows colour and shape but not motion, so its text side **drops
  the motion words** (``MOTION_WORDS``: moving, standing, left, right, up, down, still) before
  encoding, at training and at scoring time: "a red circle moving left" and "a red circle
  standing still" are the same text to it, and its score is exactly invariant to motion words
  (it can neither be fooled by nor push towards a motion it cannot see).
- :class:`ToyVideoText` (kind "video") scores the clip as a whole: the clip is resampled in time
  to ``num_frames`` frames (linear interpolation, differentiable; the identity for the toy
  default of 9) and the frames are stacked on the channel axis into one 27-channel 32x32 image
  for a CNN, so its first convolution already sees where an edge is in every frame (motion).

Score (both): the **plain cosine** between the L2-normalised visual and text embeddings, in
[-1, 1] (as CLIP / HPSv2 rewards; the learned logit scale is used only by the training loss).
An image model averages its per-frame cosines over the frames it is given.

Input contract (rewards.base): video B,F,3,H,W float in [0, 1], any H, W (resized to 32x32 with
antialiased bilinear interpolation, differentiable), B prompts -> B float32 scores,
differentiable w.r.t. the video.

Training recipe (``rewards/toy_train.py``: :func:`rewards.toy_train.train_toy_reward`,
``python -m rewards.toy_train --kind image|video``):
ToyWorld clips (9 frames, 32x32) drawn only from ``turbo.toy.split.training_specs()``; symmetric
InfoNCE with in-batch negatives, each clip adding one hard-negative caption that differs from
its own in one attribute (colour or shape for the image model; colour, shape or motion for the
video model) and is itself a training-split caption; captions that are equal (after dropping
words) count as positives of each other. AdamW, warmup then cosine decay, fixed seed. The
shipped weights are in ``turbo/toy/weights/reward_{image,video}_text/`` with their recipe in
MANIFEST.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rewards.base import FrozenReward, RewardInputError, check_video
from turbo.toy import assets
from turbo.toy.vocab import MAX_LENGTH, VOCAB
from turbo.toy.world import MOTIONS

__all__ = [
    "ASSETS", "ATTRIBUTES", "MOTION_WORDS", "ToyDualEncoder", "ToyImageText", "ToyReward", "ToyRewardConfig",
    "ToyVideoText", "load_toy_reward", "tokenize",
]

Kind = Literal["image", "video"]
# The words of the grammar that name a motion: invisible in one frame, dropped by the image model.
MOTION_WORDS: frozenset[str] = frozenset({"moving", "standing", *MOTIONS})
ASSETS: dict[str, str] = {"image": "reward_image_text", "video": "reward_video_text"}
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion")


@dataclass(frozen=True)
class ToyRewardConfig:
    """Architecture numbers, saved as ``config.json`` beside the weights.

    channels: CNN widths; the first conv keeps 32x32, each later one halves the resolution.
    num_frames: video models only, the frames the video tower sees (any F is resampled to it).
    drop_motion_words: remove ``MOTION_WORDS`` from captions before the text tower.
    """

    kind: Kind
    embed_dim: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 128)
    text_width: int = 64
    text_layers: int = 1
    text_heads: int = 4
    image_size: int = 32
    num_frames: int = 1
    drop_motion_words: bool = False

    @classmethod
    def for_kind(cls, kind: str) -> "ToyRewardConfig":
        if kind == "image":
            return cls(kind="image", num_frames=1, drop_motion_words=True)
        if kind == "video":
            return cls(kind="video", num_frames=9, drop_motion_words=False)
        raise ValueError(f"toy reward kind must be 'image' or 'video', found {kind!r}")

    @classmethod
    def from_json(cls, path: Path) -> "ToyRewardConfig":
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names or "kind" not in data:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: expected keys {sorted(names)} (kind required), found {found}")
        data["channels"] = tuple(data.get("channels", cls.channels))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


# --- text -------------------------------------------------------------------------------------

def caption_words(prompt: str, drop_words: frozenset[str] = frozenset()) -> list[str]:
    """Lower-cased whitespace-split words of ``prompt`` without ``drop_words``."""
    return [w for w in prompt.lower().split() if w not in drop_words]


def tokenize(prompts: Sequence[str], drop_words: frozenset[str] = frozenset()) -> tuple[Tensor, Tensor]:
    """B prompts -> (ids B,L int64, mask B,L bool): one ``VOCAB`` id per word (``<unk>`` outside the
    grammar), ``</s>`` appended, ``<pad>`` (0) after it; L is the longest row (at most MAX_LENGTH)."""
    rows = []
    for prompt in prompts:
        ids = [VOCAB.get(w, VOCAB["<unk>"]) for w in caption_words(prompt, drop_words)] + [VOCAB["</s>"]]
        if len(ids) > MAX_LENGTH:
            raise RewardInputError(f"toy reward: prompt {prompt!r} has {len(ids) - 1} words, expected at most "
                                   f"{MAX_LENGTH - 1} (turbo.toy.vocab.MAX_LENGTH)")
        rows.append(ids)
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [VOCAB["<pad>"]] * (length - len(r)) for r in rows], dtype=torch.long)
    return ids, ids != VOCAB["<pad>"]


class TextTower(nn.Module):
    """Word embeddings + learned positions -> ``layers`` pre-norm transformer layers -> mean over
    the caption's tokens -> linear to ``embed_dim``. ids, mask: B,L -> B,embed_dim float32."""

    def __init__(self, width: int, layers: int, heads: int, embed_dim: int) -> None:
        super().__init__()
        self.token = nn.Embedding(len(VOCAB), width, padding_idx=VOCAB["<pad>"])
        self.position = nn.Parameter(torch.randn(MAX_LENGTH, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.token(ids) + self.position[: ids.shape[1]]
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask[..., None]
        return self.proj(x.sum(1) / mask.sum(1, keepdim=True))


# --- pixels -----------------------------------------------------------------------------------

class ConvTower(nn.Module):
    """N,in_channels,S,S (pixels scaled to [-1, 1]) -> N,embed_dim: 3x3 convs with GroupNorm and
    SiLU (stride 1, then stride 2 for each later width), global average pool, linear."""

    def __init__(self, in_channels: int, channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(in_channels, width, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, width), nn.SiLU()]
            in_channels = width
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.body(x).mean((-2, -1)))


def resize_frames(frames: Tensor, size: int) -> Tensor:
    """N,3,H,W -> N,3,size,size float32 (antialiased bilinear; the identity at size x size)."""
    frames = frames.float()
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def resample_time(video: Tensor, num_frames: int) -> Tensor:
    """B,F,C,H,W -> B,num_frames,C,H,W: linear interpolation at ``num_frames`` evenly spaced times
    from the first frame to the last (differentiable; the identity when F == num_frames; a single
    frame is repeated, i.e. read as a still clip)."""
    frames = video.shape[1]
    if frames == num_frames:
        return video
    t = torch.linspace(0, frames - 1, num_frames, dtype=torch.float64)
    lo = t.floor().long().clamp(max=frames - 1)
    hi = (lo + 1).clamp(max=frames - 1)
    w = (t - lo).to(video.dtype).to(video.device).view(1, -1, 1, 1, 1)
    return video[:, lo.to(video.device)] * (1 - w) + video[:, hi.to(video.device)] * w


class ToyDualEncoder(nn.Module):
    """The trainable model: visual tower, text tower and CLIP's learned logit scale (log form)."""

    def __init__(self, config: ToyRewardConfig) -> None:
        super().__init__()
        self.config = config
        in_channels = 3 * (config.num_frames if config.kind == "video" else 1)
        self.visual = ConvTower(in_channels, config.channels, config.embed_dim)
        self.text = TextTower(config.text_width, config.text_layers, config.text_heads, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def drop_words(self) -> frozenset[str]:
        return MOTION_WORDS if self.config.drop_motion_words else frozenset()

    def encode_visual(self, video: Tensor) -> Tensor:
        """B,F,3,H,W in [0, 1] -> unnormalised float32 features: B,F,D per frame (image model) or
        B,D per clip (video model)."""
        c = self.config
        batch, frames = video.shape[:2]
        if c.kind == "image":
            x = resize_frames(video.flatten(0, 1), c.image_size) * 2 - 1
            return self.visual(x).view(batch, frames, -1)
        clip = resample_time(video.float(), c.num_frames)
        x = resize_frames(clip.flatten(0, 1), c.image_size) * 2 - 1
        return self.visual(x.reshape(batch, 3 * c.num_frames, c.image_size, c.image_size))

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """B prompts -> B,D unnormalised float32 text features."""
        ids, mask = tokenize(prompts, self.drop_words)
        device = self.logit_scale.device
        return self.text(ids.to(device), mask.to(device))

    def text_key(self, prompt: str) -> str:
        """What the text tower sees of ``prompt``: equal keys are the same caption to this model."""
        return " ".join(caption_words(prompt, self.drop_words))


# --- the rewards --------------------------------------------------------------------------------

class ToyReward(FrozenReward):
    """A frozen :class:`ToyDualEncoder` behind the reward protocol; score = cosine (see module doc)."""

    kind: ClassVar[Kind]

    def __init__(self, model: ToyDualEncoder, name: str | None = None) -> None:
        if model.config.kind != self.kind:
            raise ValueError(f"{type(self).__name__}: expected a model of kind {self.kind!r}, "
                             f"found config kind {model.config.kind!r}")
        super().__init__(name or f"toy_{self.kind}")
        self.model = model.requires_grad_(False)
        self.train(False)

    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """B prompts -> B,D float32 L2-normalised text features (no grad), cached per text key: prompts
        that differ only in dropped words share one entry, so their scores are equal bit for bit."""
        return self.cached_text_features([self.model.text_key(p) for p in prompts], self.model.encode_text)

    def forward(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1]; prompts: B strings -> B float32 cosines (frame mean for
        the image model)."""
        check_video(video, prompts, who=f"reward '{self.name}'")
        visual = F.normalize(self.model.encode_visual(video).float(), dim=-1)
        text = self.text_features(prompts)
        if self.kind == "image":
            return (visual * text[:, None, :]).sum(-1).mean(1)
        return (visual * text).sum(-1)

    def score_candidates(self, video: Tensor, candidates: Sequence[str]) -> Tensor:
        """Every video against every one of K candidate prompts, the visual side computed once:
        B,F,3,H,W in [0, 1] -> B,K float32, entry (b, k) = ``self(video[b:b+1], [candidates[k]])``."""
        check_video(video, [""] * video.shape[0], who=f"reward '{self.name}'")
        visual = F.normalize(self.model.encode_visual(video).float(), dim=-1)  # B,F,D or B,D
        text = self.text_features(candidates)  # K,D
        scores = visual @ text.T
        return scores.mean(1) if self.kind == "image" else scores

    @classmethod
    def from_folder(cls, folder: str | Path, name: str | None = None) -> "ToyReward":
        """Load ``config.json`` + ``model.safetensors`` from ``folder`` (no checksum check)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = ToyRewardConfig.from_json(folder / "config.json")
        if config.kind != cls.kind:
            raise ValueError(f"{folder / 'config.json'}: expected kind {cls.kind!r} for {cls.__name__}, "
                             f"found {config.kind!r}")
        model = ToyDualEncoder(config)
        state = load_file(str(folder / "model.safetensors"), device="cpu")
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f"{folder / 'model.safetensors'}: does not match config.json; missing tensors "
                             f"{sorted(missing)}, unexpected tensors {sorted(unexpected)}")
        model.load_state_dict(state)
        return cls(model, name)

    @classmethod
    def from_asset(cls, name: str | None = None, root: str | Path | None = None) -> "ToyReward":
        """The shipped weights (``turbo/toy/weights/<asset>/``), every file checked against MANIFEST.json
        (``turbo.toy.assets.ChecksumError`` names a bad file)."""
        return cls.from_folder(assets.asset(ASSETS[cls.kind], root), name)


class ToyImageText(ToyReward):
    """Image-text toy reward: per-frame cosine, motion words ignored (module doc)."""

    kind = "image"


class ToyVideoText(ToyReward):
    """Video-text toy reward: one cosine per clip, sees motion (module doc)."""

    kind = "video"


def load_toy_reward(kind: str, name: str | None = None) -> ToyReward:
    """Hydra factory (conf/reward/toy.yaml): the shipped toy reward of ``kind`` ("image" | "video")."""
    classes = {"image": ToyImageText, "video": ToyVideoText}
    if kind not in classes:
        raise ValueError(f"reward.*.model.kind: expected 'image' or 'video', found {kind!r}")
    return classes[kind].from_asset(name)
