"""Pixel levels and Pillow's resize, reproduced differentiably in torch.

The official preprocessing of CLIP-family reward models runs on uint8 PIL images: the frame is
rounded to 8-bit levels, resized by ``Image.resize`` and converted back. ``to_uint8_levels`` and
``round_straight_through`` round with straight-through gradients; ``pil_resize_levels`` is
Pillow's fixed-point resampling, bit-exact on the levels, so ``preprocess_images(match_pil=True)``
(rewards/base.py) equals the official pipeline's forward pass while passing gradients. torchvision
resizes float tensors, not Pillow's integers, so none of this exists in a library.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import torch
from torch import Tensor


class _ToUint8Levels(torch.autograd.Function):
    """x in [0, 1] -> round(x * 255) clipped to 0..255 (uint8 levels as float); backward: 255 * grad.

    Straight-through: the rounding passes the gradient of x * 255, everywhere (values a
    little outside [0, 1], which check_video lets through, keep their gradient too).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x * 255).clamp_(0, 255)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * 255


def to_uint8_levels(x: Tensor) -> Tensor:
    """Differentiable ``(x * 255).round().clamp(0, 255)``: the forward pass is exact, the backward
    pass is that of ``x * 255`` (straight-through estimator)."""
    return _ToUint8Levels.apply(x)


class _StraightThroughRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_straight_through(x: Tensor) -> Tensor:
    """``torch.round(x)`` (half to even) in the forward pass, the identity in the backward pass."""
    return _StraightThroughRound.apply(x)


# --- Pillow's Image.resize on 8-bit images (libImaging/Resample.c), reproduced in torch ---------
#
# Pillow resamples separably: for each output pixel xx it centres the filter at
# center = (xx + 0.5) * scale (scale = in / out), widens the support by max(scale, 1) so that
# downscaling antialiases, takes input pixels xmin = int(center - support + 0.5) up to
# int(center + support + 0.5) (clipped to the image), weighs pixel x by
# filter((x - center + 0.5) / max(scale, 1)) and normalises the weights to sum to one. For 8-bit
# images the weights become fixed point, int(w * 2**22 +- 0.5) (PRECISION_BITS = 32 - 8 - 2),
# each output is (2**21 + sum(pixel * weight)) >> 22, clipped to 0..255, i.e. rounded half up
# and stored as uint8. A pass is skipped when its size is unchanged. Pillow <= 12 always runs the
# horizontal pass first and the vertical one on its uint8 result; Pillow 13 runs the vertical
# pass first when the height shrinks by more than twice as many pixels as the width
# (in_h >= out_h and in_h - out_h > 2 * (in_w - out_w); in a shortest-side resize that only
# happens for portraits taller than 2:1), see _pil_vertical_first. Here each pass is a matrix
# product with the fixed-point weights in float64, exact because every product and partial sum
# is an integer below 2**53 (whatever the summation order, on CPU or GPU; autocast leaves
# float64 alone).

_PIL_PRECISION_BITS = 32 - 8 - 2


def _pil_bicubic(x: float) -> float:
    a = -0.5  # Keys' parameter in Pillow (torch's antialiased bicubic too; its plain bicubic uses -0.75)
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _pil_bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


# interpolation -> (filter, support), as Pillow's BICUBIC and BILINEAR filters.
_PIL_FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    "bicubic": (_pil_bicubic, 2.0),
    "bilinear": (_pil_bilinear, 1.0),
}


@functools.lru_cache(maxsize=64)
def _pil_fixed_point_weights(in_size: int, out_size: int, interpolation: str) -> Tensor:
    """out_size x in_size float64 matrix of Pillow's fixed-point weights (integers, scale 2**22).

    Written with Python floats (IEEE doubles) in the order of Pillow's C code, so the
    weights, rounded to integers, are Pillow's own.
    """
    filt, filter_support = _PIL_FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ss = 1.0 / filterscale
    one = float(1 << _PIL_PRECISION_BITS)
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), in_size)
        w = [filt((x - center + 0.5) * ss) for x in range(xmin, xmax)]
        total = 0.0
        for v in w:  # summed in order, as Pillow does
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        row = [0.0] * in_size
        row[xmin:xmax] = [float(int(v * one - 0.5)) if v < 0 else float(int(v * one + 0.5)) for v in w]
        rows.append(row)
    with torch.inference_mode(False):  # cached: see _pil_pass_matrices
        return torch.tensor(rows, dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def _pil_pass_matrices(in_size: int, out_size: int, interpolation: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """(fixed-point float64 weights, float32 weights / 2**22) on ``device``; see _PilPass."""
    # Cached for later calls: made as normal tensors even when the first call runs under
    # inference_mode, or a later differentiable call could not save them for backward.
    with torch.inference_mode(False):
        fixed = _pil_fixed_point_weights(in_size, out_size, interpolation)
        linear = (fixed / (1 << _PIL_PRECISION_BITS)).float()
        return fixed.to(device), linear.to(device)


class _PilPass(torch.autograd.Function):
    """One Pillow resampling pass over uint8 levels along dim -1 or -2 (see above).

    forward(levels: float tensor of integers 0..255, fixed, linear, dim) -> float32 levels 0..255,
    bit-exact with Pillow. backward: the gradient of the unrounded linear map ``linear``
    (straight-through for the rounding), zero for outputs Pillow clipped to 0 or 255.
    """

    @staticmethod
    def forward(ctx, levels: Tensor, fixed: Tensor, linear: Tensor, dim: int) -> Tensor:
        x = levels.double()
        acc = x @ fixed.T if dim == -1 else fixed @ x
        # Pillow: (2**21 + acc) >> 22, an arithmetic shift (floor); division by 2**22 is exact.
        out = torch.floor((acc + (1 << (_PIL_PRECISION_BITS - 1))) / (1 << _PIL_PRECISION_BITS))
        inside = (out >= 0) & (out <= 255)
        ctx.save_for_backward(linear, inside)
        ctx.dim = dim
        return out.clamp_(0, 255).float()

    @staticmethod
    def backward(ctx, grad: Tensor):
        linear, inside = ctx.saved_tensors
        grad = grad.float() * inside
        grad_in = grad @ linear if ctx.dim == -1 else linear.T @ grad
        return grad_in, None, None, None


@functools.cache
def _installed_pillow_major() -> int:
    try:
        import PIL
    except ImportError:  # no Pillow to agree with: behave as the Pillow the reference models ran
        return 12
    return int(PIL.__version__.split(".")[0])


def _pil_vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether the installed Pillow runs the vertical pass first for this resize (see above).

    Pillow <= 12 (read in libImaging/Resample.c): never. Pillow 13 (python-pillow/Pillow#9549):
    the rule below, measured against Pillow 13.0.0 on 400 random shapes and at its boundary.
    """
    if _installed_pillow_major() < 13:
        return False
    return in_h >= out_h and in_h - out_h > 2 * (in_w - out_w)


def pil_resize_levels(
    levels: Tensor,
    height: int,
    width: int,
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    *,
    vertical_first: bool | None = None,
) -> Tensor:
    """Pillow's ``Image.resize((width, height), BICUBIC or BILINEAR)`` on uint8 levels, differentiably.

    levels: N,C,H,W float tensor of integers in 0..255 (e.g. from :func:`to_uint8_levels`) ->
    N,C,height,width float32 integers 0..255, equal to what Pillow (reducing_gap=None, the
    default) computes on the same uint8 image. vertical_first: the order of the two passes;
    None follows the installed Pillow (Pillow <= 12: always horizontal first). Gradients: see
    :class:`_PilPass`.
    """
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"pil_resize_levels: interpolation must be 'bicubic' or 'bilinear', found {interpolation!r}")
    x = levels.float()
    in_h, in_w = x.shape[-2:]
    if vertical_first is None:
        vertical_first = _pil_vertical_first(in_h, in_w, height, width)
    passes = [(-2, height), (-1, width)] if vertical_first else [(-1, width), (-2, height)]
    for dim, size in passes:
        if size != x.shape[dim]:
            fixed, linear = _pil_pass_matrices(x.shape[dim], size, interpolation, x.device)
            x = _PilPass.apply(x, fixed, linear, dim)
    return x
