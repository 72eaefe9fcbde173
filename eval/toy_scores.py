"""ToyBench's per-video scores and the distribution score's features, from a ``VideoAnalysis``
(eval/toy_detectors.py reads the pixels; eval/toybench.py aggregates).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eval.toy_detectors import BACKGROUND_INDEX, SMOOTHNESS_SCALE, VideoAnalysis
from turbo.toy.world import SceneSpec


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
