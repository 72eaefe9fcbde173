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

Training recipe (:func:`train_toy_reward`, ``python -m rewards.toy --kind image|video``):
ToyWorld clips (9 frames, 32x32) drawn only from ``turbo.toy.split.training_specs()``; symmetric
InfoNCE with in-batch negatives, each clip adding one hard-negative caption that differs from
its own in one attribute (colour or shape for the image model; colour, shape or motion for the
video model) and is itself a training-split caption; captions that are equal (after dropping
words) count as positives of each other. AdamW, warmup then cosine decay, fixed seed. The
shipped weights are in ``turbo/toy/weights/reward_{image,video}_text/`` with their recipe in
MANIFEST.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rewards.base import FrozenReward, RewardInputError, check_video
from turbo.toy import assets
from turbo.toy.split import split_specs, stream_seed, training_specs
from turbo.toy.vocab import MAX_LENGTH, VOCAB
from turbo.toy.world import COLOURS, MOTIONS, SHAPES, ObjectSpec, SceneSpec, ToyWorld

__all__ = [
    "ASSETS", "MOTION_WORDS", "ToyDualEncoder", "ToyImageText", "ToyReward", "ToyRewardConfig",
    "ToyVideoText", "TrainResult", "load_toy_reward", "ranking_accuracy", "train_toy_reward", "tokenize",
]

Kind = Literal["image", "video"]
# The words of the grammar that name a motion: invisible in one frame, dropped by the image model.
MOTION_WORDS: frozenset[str] = frozenset({"moving", "standing", *MOTIONS})
ASSETS: dict[str, str] = {"image": "reward_image_text", "video": "reward_video_text"}
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion")
_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": tuple(MOTIONS)}


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


# --- training -------------------------------------------------------------------------------------

def _swap(obj: ObjectSpec, attribute: str, value: str) -> SceneSpec:
    return SceneSpec((dataclasses.replace(obj, **{attribute: value}),))


def one_attribute_negative(spec: SceneSpec, attributes: Sequence[str], allowed: set[SceneSpec] | None,
                           generator: torch.Generator) -> SceneSpec:
    """A scene differing from one-object ``spec`` in one of ``attributes`` (picked at random), kept
    inside ``allowed`` when given (an attribute with no allowed alternative is skipped)."""
    (obj,) = spec.objects
    order = [attributes[i] for i in torch.randperm(len(attributes), generator=generator).tolist()]
    for attribute in order:
        options = [_swap(obj, attribute, v) for v in _VALUES[attribute] if v != getattr(obj, attribute)]
        if allowed is not None:
            options = [o for o in options if o in allowed]
        if options:
            return options[int(torch.randint(len(options), (), generator=generator))]
    raise ValueError(f"no allowed one-attribute negative of {spec.caption()!r} in {list(attributes)}")


def contrastive_loss(visual: Tensor, text: Tensor, logit_scale: Tensor, keys: Sequence[str]) -> Tensor:
    """Symmetric InfoNCE (CLIP) with in-batch negatives and extra negative captions.

    visual: B,D; text: T,D (T >= B, row i < B is visual i's caption, rows >= B are extra negatives);
    keys: T text keys, equal keys are positives of each other (duplicates in a batch are not
    negatives). Per row: -log(sum over positives of softmax) = logsumexp(all) - logsumexp(positives).
    """
    batch = visual.shape[0]
    logits = logit_scale.exp() * F.normalize(visual, dim=-1) @ F.normalize(text, dim=-1).T  # B,T
    same = torch.tensor([[a == b for b in keys] for a in keys[:batch]], device=visual.device)  # B,T
    def nll(l: Tensor, pos: Tensor) -> Tensor:
        return (l.logsumexp(-1) - l.masked_fill(~pos, float("-inf")).logsumexp(-1)).mean()
    return (nll(logits, same) + nll(logits[:, :batch].T, same[:, :batch].T)) / 2


@dataclass
class TrainResult:
    model: ToyDualEncoder
    losses: list[float]
    seconds: float
    settings: dict


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps (independent of ``steps``, so a short re-run repeats the
    first losses of a long one), then cosine decay to 0.1 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_toy_reward(
    kind: str, steps: int, seed: int = 0, *, batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 0.01,
    warmup: int = 20, noise: float = 0.03, log_every: int = 0,
) -> TrainResult:
    """Train a toy reward of ``kind`` for ``steps`` AdamW steps on training-split ToyWorld clips
    (9 frames, 32x32; see the module doc). The image model sees one random frame of each clip.
    ``noise``: each clip gets Gaussian pixel noise of a std drawn from U(0, noise), for robustness
    to imperfect generated videos. Deterministic given the arguments (and the torch build and
    thread count). Returns the trained model, the loss of every step, wall time and the settings."""
    config = ToyRewardConfig.for_kind(kind)
    specs = training_specs()
    allowed = set(specs)
    by_caption = {s.caption(): s for s in specs}
    world = ToyWorld(num_frames=9, height=32, width=32, seed=seed, specs=specs)
    generator = torch.Generator().manual_seed(stream_seed("toy-reward", kind, seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ToyDualEncoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    negative_attributes = ("colour", "shape") if kind == "image" else ATTRIBUTES
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        captions, clips, negatives = [], [], []
        for j in range(batch_size):
            caption, clip = world.sample(step * batch_size + j)
            spec = by_caption[caption]
            captions.append(caption)
            clips.append(clip)
            negatives.append(one_attribute_negative(spec, negative_attributes, allowed, generator).caption())
        video = torch.stack(clips)  # B,9,3,32,32
        if kind == "image":  # one random frame per clip
            pick = torch.randint(video.shape[1], (batch_size,), generator=generator)
            video = video[torch.arange(batch_size), pick][:, None]
        sigma = noise * torch.rand(batch_size, 1, 1, 1, 1, generator=generator)
        video = (video + sigma * torch.randn(video.shape, generator=generator)).clamp(0, 1)
        texts = captions + negatives
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup)
        visual = model.encode_visual(video)
        visual = visual[:, 0] if kind == "image" else visual
        loss = contrastive_loss(visual, model.encode_text(texts), model.logit_scale, [model.text_key(t) for t in texts])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[{kind}] step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    settings = {"kind": kind, "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "warmup": warmup, "noise": noise,
                "num_frames": 9, "height": 32, "width": 32}
    return TrainResult(model.eval(), losses, time.perf_counter() - start, settings)


# --- evaluation -------------------------------------------------------------------------------------

def ranking_accuracy(reward: ToyReward, attribute: str, specs: Sequence[SceneSpec] | None = None,
                     clips_per_spec: int = 8, seed: int = 1, all_alternatives: bool = False) -> float:
    """Share of clips whose true caption scores strictly above a caption with a wrong ``attribute``.

    specs: one-object scenes to render (default: the held-out part of ``split_specs()``, never
    trained on), ``clips_per_spec`` clips each from ``ToyWorld(seed=seed)``, 9 frames at 32x32. The
    wrong caption is one random other value of the attribute, or with ``all_alternatives`` every
    other value (the clip then counts only if the true caption beats them all).
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, found {attribute!r}")
    specs = list(split_specs()[1] if specs is None else specs)
    generator = torch.Generator().manual_seed(stream_seed("toy-reward-eval", attribute, seed))
    wins = total = 0
    for k, spec in enumerate(specs):
        world = ToyWorld(num_frames=9, height=32, width=32, seed=seed, specs=[spec])
        video = torch.stack([world.sample(k * clips_per_spec + i)[1] for i in range(clips_per_spec)])
        (obj,) = spec.objects
        wrong = [v for v in _VALUES[attribute] if v != getattr(obj, attribute)]
        if not all_alternatives:
            wrong = [wrong[int(torch.randint(len(wrong), (), generator=generator))]]
        candidates = [spec.caption()] + [_swap(obj, attribute, v).caption() for v in wrong]
        with torch.no_grad():
            scores = reward.score_candidates(video, candidates)  # clips_per_spec, 1 + len(wrong)
        wins += int((scores[:, :1] > scores[:, 1:]).all(1).sum())
        total += clips_per_spec
    return wins / total


# --- the recipe's command line ------------------------------------------------------------------

def save_asset(model: ToyDualEncoder, folder: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` atomically (whole folder replaced)."""
    from safetensors.torch import save_file

    from turbo.atomic import atomic_dir

    folder = Path(folder)
    umask = os.umask(0)
    os.umask(umask)
    with atomic_dir(folder) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(model.config.to_json())
        # mkdtemp makes the folder private (0700): shipped files must be readable like the package
        tmp.chmod(0o777 & ~umask)
        for path in tmp.iterdir():
            path.chmod(0o666 & ~umask)
    return folder


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rewards.toy", description="Train and ship a toy reward.")
    parser.add_argument("--kind", choices=("image", "video"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="asset folder, e.g. turbo/toy/weights/reward_image_text; "
                                                     "its parent's MANIFEST.json gets the entry")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train_toy_reward(args.kind, args.steps, args.seed, log_every=25)
    out = save_asset(result.model, args.out)
    reward = (ToyImageText if args.kind == "image" else ToyVideoText)(result.model)
    accuracy = {a: round(ranking_accuracy(reward, a), 4) for a in ATTRIBUTES}
    tail = result.losses[-10:]
    recipe = {
        "command": f"python -m rewards.toy --kind {args.kind} --steps {args.steps} --seed {args.seed} "
                   f"--out {args.out} --threads {args.threads}",
        **result.settings, "threads": args.threads,
        "final_loss": round(result.losses[-1], 6), "final_loss_mean10": round(sum(tail) / len(tail), 6),
        "first_losses": [round(x, 6) for x in result.losses[:5]],
        "train_seconds": round(result.seconds, 1), "torch": torch.__version__,
        "heldout_ranking_accuracy": accuracy, "date": datetime.date.today().isoformat(),
    }
    assets.register(out.name, recipe, root=out.parent)
    print(json.dumps(recipe, indent=2))
    return recipe


if __name__ == "__main__":
    main()
