"""ToyBench's detectors and scores: what a toy-world video shows, read from its pixels (no learned model).

Nothing here is learned, so it shares nothing with any reward model a student was trained
against. A caption gives the truth (``parse_caption``); analytic detectors read the pixels:

1. every pixel is classified to the nearest palette colour (``COLOURS`` + ``BACKGROUND``)
   within ``PALETTE_THRESHOLD``, else "off-palette";
2. per frame, 8-connected components of one colour are blobs (area, centroid, bounding box);
3. a colour whose largest blob is present (``MIN_AREA_FRACTION``) in at least half of the frames
   is an object; its shape comes from blur-tolerant moments of its soft mask around the blob
   (``classify_shape``: a kurtosis ratio of 2 for squares and 1 for circles, a skewness of -0.57
   for apex-up triangles), medians over frames; its motion from a constant-velocity fit to the
   centroid track (``STILL_FRACTION`` of the frame separates still).

Scores, each raw in [0, 1] per video, averaged per prompt, then over prompts, then normalised as
VBench does, ``(raw - min) / (max - min)`` clipped to [0, 1], with ``NORMALISATION``:

Quality (prompt-free, like VBench's): subject_consistency (presence x area stability of each
object), background_consistency (IoU of adjacent frames' background masks: right colour and
steady), temporal_flickering (VBench's ``1 - mean |frame_t+1 - frame_t|``, min 2/3 = i.i.d.
uniform noise), motion_smoothness (constant-velocity fit residual), imaging_quality (share of
on-palette pixels) and distribution (``exp(-FD / d)``, the Frechet distance between
standardised hand-crafted feature vectors of the generated set and of real clips of the same
prompts, over the number of features ``d``).
Semantic: colour (named colours present, times their share of the detected objects' area),
shape, motion (each object of a named colour has the named shape / motion), count (as many
objects as named). ``Quality`` and ``Semantic`` are plain means, ``Total = (4 Quality +
Semantic) / 5``, all on 0..100 (REFERENCES.md, VBench).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as nnf
from torch import Tensor

from turbo.toy.world import BACKGROUND, COLOURS

__all__ = [
    "NORMALISATION", "PALETTE_NAMES", "QUALITY_DIMENSIONS", "SEMANTIC_DIMENSIONS", "Blobs", "DetectedObject",
    "VideoAnalysis", "analyse_video", "analyse_videos", "classify_motion", "classify_pixels", "classify_shape",
    "find_blobs",
]

PALETTE_NAMES: tuple[str, ...] = (*COLOURS, "background")
PALETTE = torch.tensor([*COLOURS.values(), BACKGROUND], dtype=torch.float32)
BACKGROUND_INDEX, OFF_PALETTE = len(COLOURS), -1
# Half the closest two palette colours' distance (red-orange, orange-yellow: 0.5) is 0.25; a bit
# more keeps the interior of small objects after H.264 (chroma is stored at half resolution).
PALETTE_THRESHOLD = 0.3
# A blob counts from a quarter of the smallest object the world draws (a triangle of base
# 0.2 * min(H, W): area 0.02 * min(H, W)^2).
MIN_AREA_FRACTION = 0.005
STILL_FRACTION = 0.1  # the world moves an object >= 0.24 of the frame, or not at all
# Shape from moments of the object's soft mask (below). Measured (medians over frames, 240 clips):
# kurtosis ratio of circles 0.82..1.18 (0.57..1.64 after H.264, 0.94..1.32 under a 1 px Gaussian
# blur), of squares 2 (1.96.. after H.264); skewness of triangles -0.67..-0.53 (up to -0.21 under
# blur, one outlier of 240 after H.264), of circles and squares within +-0.12.
SQUARE_KURTOSIS_RATIO, TRIANGLE_SKEWNESS = 1.8, -0.15
# A pixel is a blend of an object colour and the background if it lies within this distance of
# the segment between them; the soft mask looks this far (fraction of min(H, W)) around the blob.
BLEND_THRESHOLD, SOFT_MARGIN_FRACTION = 0.25, 0.06

QUALITY_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering",
                      "motion_smoothness", "imaging_quality", "distribution")
SEMANTIC_DIMENSIONS = ("colour", "shape", "motion", "count")
NORMALISATION: dict[str, tuple[float, float]] = {d: (0.0, 1.0) for d in QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS}
NORMALISATION["temporal_flickering"] = (2 / 3, 1.0)  # E|u - u'| = 1/3 for independent uniform pixels
SMOOTHNESS_SCALE = 0.1  # a path residual (rms, fraction of the frame) this large scores 0


# ---------------------------------------------------------------- pixels -> blobs -> objects

def classify_pixels(video: Tensor, threshold: float = PALETTE_THRESHOLD) -> Tensor:
    """``F,3,H,W`` in [0, 1] -> ``F,H,W`` int64: index into ``PALETTE_NAMES``, or -1 (off-palette)."""
    frames, _, height, width = video.shape
    pixels = video.permute(0, 2, 3, 1).reshape(-1, 3).float()
    distance, index = torch.cdist(pixels, PALETTE).min(dim=1)
    return torch.where(distance <= threshold, index, OFF_PALETTE).view(frames, height, width)


def _component_labels(classes: Tensor) -> tuple[Tensor, Tensor]:
    """8-connected components of equal object colour, per frame of an ``F,H,W`` class map.

    Returns ``(pixel, root)``: the flat indices of the object-coloured pixels (ascending) and, for
    each, the flat index of the first pixel of its component.
    """
    frames, height, width = classes.shape
    objects = (classes >= 0) & (classes < BACKGROUND_INDEX)
    pixel = torch.nonzero(objects.flatten()).flatten()
    slot = torch.full((classes.numel(),), -1)
    slot[pixel] = torch.arange(len(pixel))
    padded = nnf.pad(classes, (1, 1, 1, 1), value=-2)
    ends = []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each 8-neighbour link once; padding stops wrap-around
        link = objects & (padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] == classes)
        start = torch.nonzero(link.flatten()).flatten()
        ends.append((slot[start], slot[start + dy * width + dx]))
    a, b = torch.cat([e[0] for e in ends]), torch.cat([e[1] for e in ends])
    label = torch.arange(len(pixel))
    while True:  # min-label propagation along the links, with pointer jumping: a few rounds
        low = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, low, "amin").scatter_reduce(0, b, low, "amin")
        new = new[new]
        if torch.equal(new, label):
            return pixel, pixel[label]
        label = new


@dataclass(frozen=True)
class Blobs:
    """One entry per connected component: ``frame``, ``colour`` (palette index), ``area`` (pixels),
    centroid ``cx, cy`` and bounding box ``x0..x1, y0..y1`` (inclusive), in pixels."""

    frame: Tensor
    colour: Tensor
    area: Tensor
    cx: Tensor
    cy: Tensor
    x0: Tensor
    x1: Tensor
    y0: Tensor
    y1: Tensor

    def in_frames(self, start: int, stop: int) -> Blobs:
        """The blobs of frames ``start <= frame < stop``, renumbered from 0."""
        keep = (self.frame >= start) & (self.frame < stop)
        parts = {f.name: getattr(self, f.name)[keep] for f in fields(self)}
        return Blobs(**{**parts, "frame": parts["frame"] - start})


def find_blobs(classes: Tensor) -> Blobs:
    """Connected components of each object colour in each frame of an ``F,H,W`` class map."""
    frames, height, width = classes.shape
    pixel, root = _component_labels(classes)
    roots, member, area = torch.unique(root, return_inverse=True, return_counts=True)
    y, x = (pixel // width) % height, pixel % width
    k = len(roots)

    def total(values: Tensor) -> Tensor:
        return torch.zeros(k, dtype=torch.float64).index_add_(0, member, values.double() + 0.5) / area

    def extreme(values: Tensor, how: str) -> Tensor:
        return torch.full((k,), -1 if how == "amax" else 1 << 30).scatter_reduce(0, member, values, how)

    return Blobs(frame=roots // (height * width), colour=classes.flatten()[roots], area=area,
                 cx=total(x), cy=total(y), x0=extreme(x, "amin"), x1=extreme(x, "amax"),
                 y0=extreme(y, "amin"), y1=extreme(y, "amax"))


def classify_shape(kurtosis_ratio: float, skewness: float) -> str:
    """Shape from two moments of an object's soft mask (fourth cumulants ``k4`` of its projections):

    ``kurtosis_ratio = (k4_x + k4_y) / (k4_diagonal + k4_antidiagonal)``: 2 for an axis-aligned
    square (uniform projections on the axes, triangular on the diagonals), 1 for a disk;
    ``skewness``, of the vertical projection: -2 sqrt(2) / 5 = -0.57 for the apex-up triangle, 0 for
    the others. Cumulants of a blurred shape are the shape's plus the kernel's, so a symmetric
    Gaussian blur leaves the ratio unchanged (and only shrinks the skewness through the variance):
    both survive the smeared edges of an mp4 or of a generator's decoder.
    """
    if skewness < TRIANGLE_SKEWNESS:
        return "triangle"
    return "square" if kurtosis_ratio >= SQUARE_KURTOSIS_RATIO else "circle"


def _soft_moments(video: Tensor, colour: int, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor) -> tuple[float, float]:
    """Median over frames of ``(kurtosis_ratio, skewness)`` of colour ``colour``'s soft mask in
    ``S,3,H,W`` frames, each looked at within its blob's box (inclusive, per frame) plus a margin.

    The soft mask is each pixel's fraction of the way from the background to the colour, where the
    pixel lies near that segment (``BLEND_THRESHOLD``): an edge smeared into a blend still counts
    for the share of the colour it holds, which a hard mask would either keep whole or drop.
    """
    _, _, height, width = video.shape
    background = PALETTE[BACKGROUND_INDEX].view(1, 3, 1, 1)
    direction = PALETTE[colour].view(1, 3, 1, 1) - background
    offset = video.float() - background
    alpha = ((offset * direction).sum(dim=1) / direction.square().sum()).clamp(0, 1)
    near = (offset - alpha.unsqueeze(1) * direction).square().sum(dim=1) <= BLEND_THRESHOLD ** 2
    margin = math.ceil(SOFT_MARGIN_FRACTION * min(height, width))
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    window = ((ys >= (y0 - margin).view(-1, 1, 1)) & (ys <= (y1 + margin).view(-1, 1, 1))
              & (xs >= (x0 - margin).view(-1, 1, 1)) & (xs <= (x1 + margin).view(-1, 1, 1)))
    mass = torch.where(near & window, alpha, 0.0).double()
    total = mass.sum(dim=(1, 2))

    def mean(values: Tensor) -> Tensor:
        return (mass * values).sum(dim=(1, 2)) / total

    x = xs.double() - mean(xs.double()).view(-1, 1, 1)
    y = ys.double() - mean(ys.double()).view(-1, 1, 1)

    def cumulant4(u: Tensor) -> Tensor:
        return mean(u ** 4) - 3 * mean(u ** 2) ** 2

    ratio = (cumulant4(x) + cumulant4(y)) / (cumulant4((x + y) / math.sqrt(2)) + cumulant4((x - y) / math.sqrt(2)))
    skewness = mean(y ** 3) / mean(y ** 2) ** 1.5
    return ratio.nanmedian().item(), skewness.nanmedian().item()


def classify_motion(dx: float, dy: float) -> str:
    """Motion from a displacement over the clip as fractions of the frame's width / height (y down)."""
    if max(abs(dx), abs(dy)) < STILL_FRACTION:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@dataclass(frozen=True)
class DetectedObject:
    """A colour tracked through a clip. ``presence``: fraction of frames it is seen in; ``areas``:
    its largest blob per frame (fraction of the frame, 0 where absent); ``kurtosis_ratio`` and
    ``skewness``: see ``classify_shape``; ``fill`` of its bounding box and centroid ``offset`` below
    the box centre (fraction of the box height) of the hard blob; ``displacement``: (dx, dy) over the
    clip and ``path_residual`` (rms) of a constant-velocity fit, as fractions of the frame."""

    colour: str
    shape: str
    motion: str
    presence: float
    areas: Tensor
    kurtosis_ratio: float
    skewness: float
    fill: float
    offset: float
    displacement: tuple[float, float]
    path_residual: float


def _track(video: Tensor, blobs: Blobs, colour: int, min_area: float) -> DetectedObject | None:
    frames, _, height, width = video.shape
    keep = (blobs.colour == colour) & (blobs.area >= min_area)
    if not keep.any():
        return None
    # The largest blob of this colour in each frame (the first one on a tie).
    index = torch.nonzero(keep).flatten()
    frame, area = blobs.frame[index], blobs.area[index]
    largest = torch.zeros(frames, dtype=area.dtype).scatter_reduce(0, frame, area, "amax")
    index = index[area == largest[frame]]
    none = len(blobs.area)
    chosen = torch.full((frames,), none).scatter_reduce(0, blobs.frame[index], index, "amin")
    seen = torch.nonzero(chosen < none).flatten()
    if len(seen) < frames / 2:
        return None
    b = chosen[seen]
    box_w, box_h = (blobs.x1[b] - blobs.x0[b] + 1).double(), (blobs.y1[b] - blobs.y0[b] + 1).double()
    fill = (blobs.area[b] / (box_w * box_h)).median().item()
    offset = ((blobs.cy[b] - (blobs.y0[b] + blobs.y1[b] + 1) / 2) / box_h).median().item()
    ratio, skewness = _soft_moments(video[seen], colour, blobs.x0[b], blobs.x1[b], blobs.y0[b], blobs.y1[b])
    areas = torch.zeros(frames, dtype=torch.float64)
    areas[seen] = blobs.area[b].double() / (height * width)
    t = seen.double()
    path = torch.stack([blobs.cx[b] / width, blobs.cy[b] / height], dim=1)  # fractions of the frame
    if len(seen) > 1:  # least squares x(t) = a + v t, per axis
        design = torch.stack([torch.ones_like(t), t], dim=1)
        coef = torch.linalg.lstsq(design, path).solution
        velocity = coef[1] * (frames - 1)
        residual = (path - design @ coef).square().sum(dim=1).mean().sqrt().item()
    else:
        velocity, residual = torch.zeros(2, dtype=torch.float64), 0.0
    dx, dy = velocity.tolist()
    return DetectedObject(colour=PALETTE_NAMES[colour], shape=classify_shape(ratio, skewness),
                          motion=classify_motion(dx, dy), presence=len(seen) / frames, areas=areas,
                          kurtosis_ratio=ratio, skewness=skewness, fill=fill, offset=offset,
                          displacement=(dx, dy), path_residual=residual)


@dataclass(frozen=True)
class VideoAnalysis:
    """Everything the scores need from one clip; ``palette_share`` is the fraction of pixels of each
    ``PALETTE_NAMES`` entry, ``count`` the median over frames of the number of blobs."""

    objects: list[DetectedObject]
    count: int
    palette_share: Tensor
    on_palette: float
    frame_difference: float
    background_iou: float


def analyse_video(video: Tensor) -> VideoAnalysis:
    """Run the detectors on an ``F,3,H,W`` clip in [0, 1]."""
    return analyse_videos([video])[0]


def analyse_videos(videos: Sequence[Tensor], batch_pixels: int = 1 << 22) -> list[VideoAnalysis]:
    """``analyse_video`` of each clip, classified and labelled in batches of about ``batch_pixels``
    pixels (components never cross frames, so clips of one ``H, W`` can share a batch)."""
    analyses: list[VideoAnalysis] = []
    start = 0
    while start < len(videos):
        stop, pixels = start + 1, videos[start].numel() // 3
        while stop < len(videos) and videos[stop].shape[-2:] == videos[start].shape[-2:] \
                and pixels + videos[stop].numel() // 3 <= batch_pixels:
            pixels += videos[stop].numel() // 3
            stop += 1
        analyses += _analyse_batch(videos[start:stop])
        start = stop
    return analyses


def _analyse_batch(videos: Sequence[Tensor]) -> list[VideoAnalysis]:
    height, width = videos[0].shape[-2:]
    classes = classify_pixels(torch.cat(list(videos)))
    blobs = find_blobs(classes)
    min_area = MIN_AREA_FRACTION * min(height, width) ** 2
    analyses, start = [], 0
    for video in videos:
        stop = start + len(video)
        analyses.append(_analyse(video, classes[start:stop], blobs.in_frames(start, stop), min_area))
        start = stop
    return analyses


def _analyse(video: Tensor, classes: Tensor, blobs: Blobs, min_area: float) -> VideoAnalysis:
    frames, _, height, width = video.shape
    tracks = [_track(video, blobs, c, min_area) for c in range(BACKGROUND_INDEX)]
    objects = sorted((t for t in tracks if t is not None), key=lambda o: -o.areas.mean().item())
    big = blobs.area >= min_area
    count = int(torch.bincount(blobs.frame[big], minlength=frames).median())
    share = torch.bincount(classes.flatten() + 1, minlength=len(PALETTE_NAMES) + 1).double() / classes.numel()
    background = classes == BACKGROUND_INDEX
    if frames > 1:
        difference = (video[1:] - video[:-1]).abs().mean().item()
        both = (background[1:] & background[:-1]).sum(dim=(1, 2)).double()
        either = (background[1:] | background[:-1]).sum(dim=(1, 2)).double()
        iou = torch.where(either > 0, both / either.clamp(min=1), 0.0).mean().item()
    else:
        difference, iou = 0.0, float(background.any())
    return VideoAnalysis(objects=objects, count=count, palette_share=share[1:], on_palette=1 - share[0].item(),
                         frame_difference=difference, background_iou=iou)
