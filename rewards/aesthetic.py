"""LAION aesthetic predictor: a linear head or small MLP on L2-normalised CLIP ViT-L/14 image features.

    score(video) = mean over frames f of head(E_img(video[f]) / |E_img(video[f])|)

E_img is OpenAI's CLIP ViT-L/14 image tower (open_clip ``ViT-L-14`` with QuickGELU, as OpenAI
trained it); scores are on the 1-10 rating scale of the training data. The prompt plays no part
(prompts are still checked, so the reward fits the protocol). Heads, told apart by their keys:

- ``linear``: ``nn.Linear(768, 1)`` (LAION-AI/aesthetic-predictor, ``sa_0_4_vit_l_14_linear.pth``);
- ``mlp``: improved-aesthetic-predictor's ``layers`` = Linear(768, 1024), Dropout, Linear(1024, 128),
  Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1) — no activations
  (``sac+logos+ava1-l14-linearMSE.pth``; keys ``layers.{0,2,4,6,7}``);
- ``mlp_relu``: the same with a ReLU after each of the first four Linears
  (``ava+logos-l14-reluMSE.pth``; keys ``layers.{0,3,6,9,11}``).

Preprocessing is OpenAI CLIP's PIL pipeline (resize shorter side 224 bicubic, centre crop,
OpenAI mean/std), so ``match_pil`` is on by default.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rewards.base import OPENAI_MEAN, OPENAI_STD, FrozenReward, check_video, preprocess_images
from rewards.clip import tiny_clip_model
from rewards.loading import load_checkpoint_into, read_state_dict
from turbo.seeding import seeded

HeadKind = Literal["linear", "mlp", "mlp_relu"]
# Linear layer indices inside ``layers`` (an nn.Sequential) for each MLP head; the rest are
# Dropout (and ReLU) layers, which have no weights and are identities in eval mode.
_MLP_LINEARS = {"mlp": (0, 2, 4, 6, 7), "mlp_relu": (0, 3, 6, 9, 11)}
# Entries of OpenAI's TorchScript CLIP state dict that are not weights.
OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def head_kind(state: Mapping[str, Tensor]) -> HeadKind:
    """Which aesthetic head a state dict holds, from its key names (ValueError if none)."""
    keys = set(state)
    if keys == {"weight", "bias"}:
        return "linear"
    for kind, linears in _MLP_LINEARS.items():
        if keys == {f"layers.{i}.{p}" for i in linears for p in ("weight", "bias")}:
            return kind
    raise ValueError(
        "expected an aesthetic head state dict with keys {weight, bias} (Linear(768, 1)) or "
        "layers.{0,2,4,6,7}.{weight,bias} / layers.{0,3,6,9,11}.{weight,bias} (improved MLP), "
        f"found {len(keys)} keys {sorted(keys)[:6]}"
    )


class AestheticMLP(nn.Module):
    """improved-aesthetic-predictor's head: ``layers`` = Linear/[ReLU]/Dropout blocks, key layout as the reference."""

    def __init__(self, widths: Sequence[int], relu: bool = False) -> None:
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"AestheticMLP: expected 6 widths (in, 1024, 128, 64, 16, 1 in the reference), found {widths}")
        dropouts = (0.2, 0.2, 0.1, None, None)  # as in the reference; identities in eval mode
        layers: list[nn.Module] = []
        for i, p in enumerate(dropouts):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if relu and i < 4:
                layers.append(nn.ReLU())
            if p is not None:
                layers.append(nn.Dropout(p))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """N,in float -> N,1."""
        return self.layers(features)


def aesthetic_head(kind: HeadKind, widths: Sequence[int]) -> nn.Module:
    """An untrained head: ``linear`` with widths (in, 1), or an MLP with widths (in, h1, h2, h3, h4, 1)."""
    if kind == "linear":
        return nn.Linear(widths[0], widths[1])
    if kind not in _MLP_LINEARS:
        raise ValueError(f"aesthetic head: expected 'linear', 'mlp' or 'mlp_relu', found {kind!r}")
    return AestheticMLP(widths, relu=kind == "mlp_relu")


def head_from_state_dict(state: Mapping[str, Tensor]) -> nn.Module:
    """The head a state dict describes (kind from the keys, widths from the shapes), not yet loaded."""
    kind = head_kind(state)
    if kind == "linear":
        out_features, in_features = state["weight"].shape
        return aesthetic_head(kind, (in_features, out_features))
    weights = [state[f"layers.{i}.weight"] for i in _MLP_LINEARS[kind]]
    return aesthetic_head(kind, [weights[0].shape[1], *(w.shape[0] for w in weights)])


class AestheticReward(FrozenReward):
    """Frozen CLIP image tower + aesthetic head; text-independent.

    forward(video: B,F,3,H,W float in [0, 1], prompts: B strings, ignored) -> B float32
    mean-over-frames head outputs, differentiable w.r.t. ``video``. Always in eval mode.
    """

    kind: Literal["image"] = "image"

    def __init__(
        self,
        visual: nn.Module,
        head: nn.Module,
        *,
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        match_pil: bool = True,
        name: str = "aesthetic",
    ) -> None:
        super().__init__(name)
        self.visual = visual.requires_grad_(False)
        self.head = head.requires_grad_(False)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.match_pil = match_pil
        self.train(False)

    def image_features(self, images: Tensor) -> Tensor:
        """N,3,H,W float in [0, 1] -> N,D float32 L2-normalised image features (with grad)."""
        pixels = preprocess_images(images, self.image_size, self.mean, self.std, "bicubic", match_pil=self.match_pil)
        dtype = next(self.visual.parameters()).dtype
        return F.normalize(self.visual(pixels.to(dtype)).float(), dim=-1)

    def forward(self, video: Tensor, prompts: list[str]) -> Tensor:
        """video: B,F,3,H,W float in [0, 1]; prompts: B strings (unused) -> B float32 scores."""
        check_video(video, prompts, who=f"reward '{self.name}'")
        batch, frames = video.shape[:2]
        features = self.image_features(video.flatten(0, 1))
        head_dtype = next(self.head.parameters()).dtype
        return self.head(features.to(head_dtype)).float().view(batch, frames).mean(1)


def aesthetic_clip_model(arch: str = "ViT-L-14", *, quick_gelu: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` of ``arch`` (OpenAI's ViT-L/14 layout), weights loaded separately."""
    if ":" in arch:
        raise ValueError(f"aesthetic: arch must be a built-in open_clip name such as 'ViT-L-14', found {arch!r}")
    return open_clip.create_model(arch, pretrained=None, load_weights=False, force_quick_gelu=quick_gelu, device=device)


def aesthetic_reward(
    clip_checkpoint: str,
    head_checkpoint: str,
    name: str = "aesthetic",
    arch: str = "ViT-L-14",
    quick_gelu: bool = True,
    match_pil: bool = True,
    allow_pickle: bool = False,
) -> AestheticReward:
    """LAION aesthetic predictor from local files, e.g. ``("/ckpts/ViT-L-14.pt", "/ckpts/sac+logos+ava1-l14-linearMSE.pth")``.

    clip_checkpoint: OpenAI's TorchScript ``ViT-L-14.pt`` or an open_clip state dict of the same
    model; only its image tower is kept. head_checkpoint: a linear or MLP head (module docstring),
    whose input width must equal the CLIP embedding width (768).
    """
    who = f"reward '{name}'"
    clip = aesthetic_clip_model(arch, quick_gelu=quick_gelu)
    load_checkpoint_into(clip, clip_checkpoint, key=f"reward.{name}.model.clip_checkpoint", who=who,
                         ignore=OPENAI_JIT_EXTRAS, allow_pickle=allow_pickle)
    head_key = f"reward.{name}.model.head_checkpoint"
    state = read_state_dict(head_checkpoint, key=head_key, who=who, allow_pickle=allow_pickle)
    try:
        head = head_from_state_dict(state)
    except ValueError as err:
        raise ValueError(f"{who}: {head_checkpoint!r} (config key {head_key}): {err}") from None
    load_checkpoint_into(head, head_checkpoint, key=head_key, who=who, allow_pickle=allow_pickle)
    embed_dim = clip.visual.output_dim
    in_features = next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features
    if in_features != embed_dim:
        raise ValueError(f"{who}: the head in {head_checkpoint!r} takes {in_features} features, {arch} gives {embed_dim}")
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return AestheticReward(clip.visual, head, image_size=int(size), match_pil=match_pil, name=name)


def tiny_aesthetic_reward(seed: int = 0, image_size: int = 32, head: HeadKind = "mlp", name: str = "aesthetic") -> AestheticReward:
    """:class:`AestheticReward` over the seeded tiny open_clip image tower and a seeded head (offline, CPU).

    The MLP heads are scaled-down (32-16-8-8-4-1); the global torch RNG is left untouched.
    """
    visual = tiny_clip_model(seed, image_size=image_size).visual
    embed_dim = visual.output_dim
    module = seeded(seed, lambda: aesthetic_head(head, (embed_dim, 1) if head == "linear" else (embed_dim, 16, 8, 8, 4, 1)))
    return AestheticReward(visual, module, image_size=image_size, name=name)
