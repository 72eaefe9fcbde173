"""ToyBench: a VBench-shaped score for the toy world, computed by detectors that know the truth.

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

Held-out prompts: ``split_specs`` deals the 120 one-object specs into a training part and a
held-out part: each held-out spec is a combination training never shows, though every colour,
shape and motion (and, at the default 0.2, every colour-shape pair) appears in training. A training
set drawn from ``ToyWorld.sample`` does overlap the held-out prompts unless it keeps to
``training_specs()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as nnf
from torch import Tensor

from turbo.paths import safe_name
from turbo.toy.split import stream_seed, split_specs
from turbo.toy.world import BACKGROUND, COLOURS, SceneSpec, ToyWorld, parse_caption

__all__ = [
    "FEATURES", "NORMALISATION", "PALETTE_NAMES", "QUALITY_DIMENSIONS", "SEMANTIC_DIMENSIONS", "Blobs",
    "DetectedObject", "ToyBench", "ToyBenchResult", "VideoAnalysis", "analyse_video", "analyse_videos",
    "classify_motion", "classify_pixels", "classify_shape", "detect_objects", "find_blobs", "frechet_distance",
    "score_video", "split_specs", "video_features",
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


def detect_objects(video: Tensor) -> list[DetectedObject]:
    """Objects in an ``F,3,H,W`` clip in [0, 1], largest (mean area) first."""
    return analyse_video(video).objects


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


# ---------------------------------------------------------------- scores

def score_video(analysis: VideoAnalysis, spec: SceneSpec) -> dict[str, float]:
    """Raw per-video scores in [0, 1] for every dimension but ``distribution`` (a set-level score)."""
    found = {o.colour: o for o in analysis.objects}
    named = [found.get(o.colour) for o in spec.objects]
    total_area = sum(o.areas.mean().item() for o in analysis.objects)
    named_area = sum(o.areas.mean().item() for o in found.values() if o.colour in {s.colour for s in spec.objects})
    share = named_area / total_area if total_area > 0 else 0.0
    n = len(spec.objects)
    scores = {
        "colour": share * sum(o is not None for o in named) / n,
        "shape": sum(o is not None and o.shape == s.shape for o, s in zip(named, spec.objects)) / n,
        "motion": sum(o is not None and o.motion == s.motion for o, s in zip(named, spec.objects)) / n,
        "count": float(analysis.count == n),
    }
    objects = analysis.objects
    stability = [o.presence * max(0.0, 1 - _coefficient_of_variation(o.areas[o.areas > 0])) for o in objects]
    smooth = [max(0.0, 1 - o.path_residual / SMOOTHNESS_SCALE) for o in objects]
    scores.update(
        subject_consistency=sum(stability) / len(objects) if objects else 0.0,
        background_consistency=analysis.background_iou,
        temporal_flickering=1 - analysis.frame_difference,
        motion_smoothness=sum(smooth) / len(objects) if objects else 0.0,
        imaging_quality=analysis.on_palette,
    )
    return scores


def _coefficient_of_variation(values: Tensor) -> float:
    return (values.std(unbiased=False) / values.mean()).item() if len(values) > 1 else 0.0


def video_features(analysis: VideoAnalysis) -> Tensor:
    """The hand-crafted feature vector the distribution score compares (float64, ``len(FEATURES)``)."""
    main = analysis.objects[0] if analysis.objects else None
    areas = main.areas[main.areas > 0] if main else torch.zeros(1)
    values = [
        analysis.on_palette, analysis.palette_share[BACKGROUND_INDEX].item(), float(analysis.count),
        areas.mean().item(), _coefficient_of_variation(areas) if main else 0.0,
        main.fill if main else 0.0, main.offset if main else 0.0,
        math.hypot(*main.displacement) if main else 0.0, main.path_residual if main else 0.0,
        analysis.frame_difference, analysis.background_iou,
    ]
    return torch.tensor(values, dtype=torch.float64)


FEATURES = ("on_palette", "background_share", "count", "object_area", "area_variation", "fill", "offset",
            "travel", "path_residual", "frame_difference", "background_iou")
FEATURE_STD_FLOOR = 0.05  # features are fractions: differences below this are not worth a std


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` between two ``N,D`` feature sets."""
    a, b = a.double(), b.double()
    mean = (a.mean(0) - b.mean(0)).square().sum()
    cov_a, cov_b = (torch.cov(x.T, correction=int(len(x) > 1)).reshape(x.shape[1], -1) for x in (a, b))
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return (mean + cov_a.trace() + cov_b.trace() - 2 * cross).clamp(min=0).item()


# ---------------------------------------------------------------- the benchmark

@dataclass(frozen=True)
class ToyBenchResult:
    """``raw``: per-dimension scores (means over prompts of means over their videos); ``scores``: the
    same normalised with ``NORMALISATION`` on 0..100; ``quality``, ``semantic``, ``total`` on 0..100;
    ``frechet_distance`` on standardised features; ``per_prompt``: raw per-video scores averaged per prompt."""

    raw: dict[str, float]
    scores: dict[str, float]
    quality: float
    semantic: float
    total: float
    frechet_distance: float
    num_videos: int
    per_prompt: dict[str, dict[str, float]] = field(repr=False)

    def to_markdown(self) -> str:
        lines = ["| dimension | group | raw | (min, max) | score |", "|---|---|---|---|---|"]
        for group, dims in (("quality", QUALITY_DIMENSIONS), ("semantic", SEMANTIC_DIMENSIONS)):
            for d in dims:
                low, high = NORMALISATION[d]
                lines.append(f"| {d} | {group} | {self.raw[d]:.4f} | ({low:.4g}, {high:.4g}) | {self.scores[d]:.2f} |")
        for name, value in (("Quality", self.quality), ("Semantic", self.semantic), ("Total", self.total)):
            lines.append(f"| **{name}** | | | | **{value:.2f}** |")
        lines.append(f"\n{len(self.per_prompt)} prompts, {self.num_videos} videos; "
                     f"Frechet distance to real clips {self.frechet_distance:.3f}")
        return "\n".join(lines)


Videos = Mapping[str, Sequence[Tensor]]


class ToyBench:
    """The held-out prompts, real reference clips for them, and the scoring.

    ``prompts`` are the first ``num_prompts`` held-out captions of ``split_specs(seed,
    heldout_fraction)``. Videos are ``F,3,H,W`` float in [0, 1] of ``(num_frames, height, width)``;
    the distribution score compares them with ``reference_per_prompt`` real clips per prompt.
    """

    def __init__(self, num_prompts: int = 24, seed: int = 0, heldout_fraction: float = 0.2,
                 num_frames: int = 16, height: int = 32, width: int = 32, reference_per_prompt: int = 4,
                 every: int = 0, probe_prompts: int = 4) -> None:
        self.training, self.held_out = split_specs(seed, heldout_fraction)
        if not 1 <= num_prompts <= len(self.held_out):
            raise ValueError(f"num_prompts must be in [1, {len(self.held_out)}] (the held-out specs at "
                             f"heldout_fraction={heldout_fraction}), found {num_prompts}")
        if reference_per_prompt < 2:
            raise ValueError(f"reference_per_prompt must be >= 2 (a covariance), found {reference_per_prompt}")
        if every < 0 or probe_prompts < 1:
            raise ValueError(f"eval.every must be >= 0 (0: no probe) and eval.probe_prompts >= 1, "
                             f"found every={every}, probe_prompts={probe_prompts}")
        self.seed, self.reference_per_prompt = seed, reference_per_prompt
        self.every, self.probe_prompts = every, min(probe_prompts, num_prompts)
        self.world = ToyWorld(num_frames=num_frames, height=height, width=width)
        self.prompts = [spec.caption() for spec in self.held_out[:num_prompts]]
        self._reference: dict[str, Tensor] = {}

    def heldout_prompts(self) -> list[str]:
        """Every held-out caption (``prompts`` is a prefix of it)."""
        return [spec.caption() for spec in self.held_out]

    def training_specs(self) -> list[SceneSpec]:
        """The one-object specs a training set may use without seeing a held-out prompt."""
        return list(self.training)

    def real_videos(self, videos_per_prompt: int = 1, seed: int = 1,
                    prompts: Sequence[str] | None = None) -> dict[str, list[Tensor]]:
        """Real clips of ``prompts`` (default: ``self.prompts``), a function of (seed, prompt, index)."""
        return {p: [self._render(p, "real", seed, i) for i in range(videos_per_prompt)]
                for p in (self.prompts if prompts is None else prompts)}

    def _render(self, prompt: str, *stream: object) -> Tensor:
        generator = torch.Generator().manual_seed(stream_seed(*stream, prompt))
        return self.world.render(parse_caption(prompt), generator)

    def _reference_features(self, prompts: Sequence[str]) -> Tensor:
        """Features of ``reference_per_prompt`` real clips of each prompt (cached), ``N,D``."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._reference]
        clips = [self._render(p, "reference", self.seed, i) for p in new for i in range(self.reference_per_prompt)]
        if clips:
            features = torch.stack([video_features(a) for a in analyse_videos(clips)])
            self._reference.update(zip(new, features.split(self.reference_per_prompt)))
        return torch.cat([self._reference[p] for p in prompts])

    def _check(self, prompt: str, video: Tensor) -> Tensor:
        expected = (self.world.num_frames, 3, self.world.height, self.world.width)
        if not isinstance(video, Tensor) or tuple(video.shape) != expected:
            found = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"ToyBench: video for {prompt!r} must be a tensor of shape {expected} "
                             f"(F,3,H,W), found {found}")
        low, high = video.min().item(), video.max().item()
        if low < -0.01 or high > 1.01:
            raise ValueError(f"ToyBench: video for {prompt!r} must be in [0, 1], found [{low:.3f}, {high:.3f}] "
                             f"(a [-1, 1] decoder output needs (x + 1) / 2)")
        return video.detach().float().cpu().clamp(0, 1)

    def evaluate(self, videos: Videos) -> ToyBenchResult:
        """Score ``{caption: [F,3,H,W video, ...]}``; any caption of the toy grammar may be used."""
        if not videos:
            raise ValueError("ToyBench.evaluate needs at least one prompt with videos, found none")
        specs = {prompt: parse_caption(prompt) for prompt in videos}
        clips = []
        for prompt, videos_of_prompt in videos.items():
            if len(videos_of_prompt) == 0:
                raise ValueError(f"ToyBench: no videos for {prompt!r}")
            clips += [(prompt, self._check(prompt, video)) for video in videos_of_prompt]
        analyses = analyse_videos([video for _, video in clips])
        per_video: dict[str, list[dict[str, float]]] = {prompt: [] for prompt in videos}
        for (prompt, _), analysis in zip(clips, analyses):
            per_video[prompt].append(score_video(analysis, specs[prompt]))
        per_prompt = {p: {d: sum(s[d] for s in scores) / len(scores) for d in scores[0]}
                      for p, scores in per_video.items()}
        generated = torch.stack([video_features(a) for a in analyses])
        reference = self._reference_features(list(videos))
        mean, std = reference.mean(0), reference.std(0).clamp(min=FEATURE_STD_FLOOR)
        distance = frechet_distance((generated - mean) / std, (reference - mean) / std)
        raw = {d: sum(p[d] for p in per_prompt.values()) / len(per_prompt) for d in next(iter(per_prompt.values()))}
        raw["distribution"] = math.exp(-distance / len(FEATURES))
        scores = {}
        for d, (low, high) in NORMALISATION.items():
            scores[d] = 100 * min(1.0, max(0.0, (raw[d] - low) / (high - low)))
        quality = sum(scores[d] for d in QUALITY_DIMENSIONS) / len(QUALITY_DIMENSIONS)
        semantic = sum(scores[d] for d in SEMANTIC_DIMENSIONS) / len(SEMANTIC_DIMENSIONS)
        return ToyBenchResult(raw=raw, scores=scores, quality=quality, semantic=semantic,
                              total=(4 * quality + semantic) / 5, frechet_distance=distance,
                              num_videos=len(clips), per_prompt=per_prompt)

    def evaluate_generator(self, generate: Callable[[list[str], int], Sequence[Tensor] | Tensor],
                           videos_per_prompt: int = 1, seed: int = 0) -> ToyBenchResult:
        """Call ``generate(self.prompts, seed + k)`` for ``k < videos_per_prompt`` (it returns one
        ``F,3,H,W`` video per prompt, as a list or a ``B,F,3,H,W`` tensor) and score the lot."""
        videos: dict[str, list[Tensor]] = {p: [] for p in self.prompts}
        for k in range(videos_per_prompt):
            batch = generate(list(self.prompts), seed + k)
            if len(batch) != len(self.prompts):
                raise ValueError(f"ToyBench: the generator returned {len(batch)} videos for "
                                 f"{len(self.prompts)} prompts")
            for prompt, video in zip(self.prompts, batch):
                videos[prompt].append(video)
        return self.evaluate(videos)

    def probe(self, generate: Callable[[list[str], int], Sequence[Tensor] | Tensor], seed: int = 0) -> dict[str, float]:
        """The validation probe of a training run (``every`` steps): the first ``probe_prompts``
        held-out prompts, one video each, scored; {"total", "quality", "semantic", <semantic dims>}."""
        prompts = self.prompts[: self.probe_prompts]
        batch = generate(list(prompts), seed)
        result = self.evaluate({p: [v] for p, v in zip(prompts, batch)})
        return {"total": result.total, "quality": result.quality, "semantic": result.semantic,
                **{d: result.scores[d] for d in SEMANTIC_DIMENSIONS}}

    def compare(self, samplers: Mapping[str, Callable[[list[str], int], Tensor]], out: str | None = None,
                videos_per_prompt: int = 1, seed: int = 0, save_videos: int = 4, fps: int = 8,
                nfe: Mapping[str, int] | None = None, timing_batch: int = 4) -> tuple[dict[str, dict], str]:
        """Score several samplers side by side on the held-out prompts (the end of ``turbo-train``).

        ``samplers``: name -> ``generate(prompts, seed)`` returning ``B,F,3,H,W`` in [0, 1]. Each is
        timed on its own after scoring (which is its warm-up): the median of 3 calls on the first
        ``timing_batch`` prompts, seconds per video of the whole call (sampling and decoding).
        ``nfe``: name -> network evaluations per video, printed beside the seconds. Prints a table,
        writes it to ``out/toybench.md`` with the first ``save_videos`` videos of each sampler as
        mp4s and a picture of them, ``out/toybench_grid.png`` (rows: sampler x prompt, columns:
        frames), and returns ``({name: {"quality", "semantic", "total", "sec_per_video", "nfe",
        <semantic dimensions>}}, the markdown table)``.
        """
        from pathlib import Path

        from turbo.timing import median_seconds
        from turbo.video import write_video

        rows: dict[str, dict] = {}
        grid: list[tuple[str, Tensor]] = []
        timing_prompts = list(self.prompts[:timing_batch])
        for name, generate in samplers.items():
            saved: list[tuple[str, Tensor]] = []

            def keep(prompts: list[str], s: int, generate=generate, saved=saved) -> Tensor:
                videos = generate(prompts, s)
                saved.extend(list(zip(prompts, videos))[: max(0, save_videos - len(saved))])
                return videos

            result = self.evaluate_generator(keep, videos_per_prompt=videos_per_prompt, seed=seed)
            seconds = median_seconds(lambda: generate(timing_prompts, seed), warmup=0) / len(timing_prompts)
            rows[name] = {"quality": result.quality, "semantic": result.semantic, "total": result.total,
                          "sec_per_video": seconds, "nfe": None if nfe is None else nfe.get(name),
                          **{d: result.scores[d] for d in SEMANTIC_DIMENSIONS}}
            if out is not None:
                for i, (prompt, video) in enumerate(saved):
                    write_video(Path(out) / "toybench" / f"{safe_name(name)}_{i:02d}_{safe_name(prompt)}.mp4",
                                video, fps=fps)
                grid += [(f"{name}\n{prompt}", video) for prompt, video in saved[:3]]
        table = compare_table(rows, num_prompts=len(self.prompts), videos_per_prompt=videos_per_prompt)
        print(table)
        if out is not None:
            from turbo.atomic import atomic_write_text

            atomic_write_text(Path(out) / "toybench.md", table + "\n")
            if grid:
                from turbo.plots import plot_grid

                plot_grid(grid, Path(out) / "toybench_grid.png")
        return rows, table


def compare_table(rows: Mapping[str, Mapping[str, float]], num_prompts: int, videos_per_prompt: int) -> str:
    """A markdown table of ``ToyBench.compare`` results, one row per sampler."""
    lines = [f"ToyBench on {num_prompts} held-out prompts x {videos_per_prompt} video(s) (0..100)", "",
             "| sampler | Quality | Semantic | Total | colour | shape | motion | count | s / video | NFE / video |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        nfe = r.get("nfe")
        lines.append(f"| {name} | {r['quality']:.1f} | {r['semantic']:.1f} | {r['total']:.1f} | {r['colour']:.1f} | "
                     f"{r['shape']:.1f} | {r['motion']:.1f} | {r['count']:.1f} | {r['sec_per_video']:.3f} | "
                     f"{'' if nfe is None else nfe} |")
    lines.append("")
    lines.append(f"s / video: the median of 3 calls on {min(4, num_prompts)} prompts after a warm-up, sampling and "
                 f"decoding; NFE: network evaluations per video (CFG counts 2 per step).")
    return "\n".join(lines)
