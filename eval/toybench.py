"""ToyBench: a VBench-shaped score for the toy world, computed by detectors that know the truth.

The detectors and the per-video scores are in ``eval/toy_detectors.py`` (module doc there: palette
classification, blobs, shape and motion, the Quality and Semantic dimensions, ``Total = (4 Quality
+ Semantic) / 5``). Here: the held-out prompts, the real reference clips, aggregation, the
side-by-side comparison of samplers and the validation probe.

Held-out prompts: ``split_specs`` deals the 120 one-object specs into a training part and a
held-out part: each held-out spec is a combination training never shows, though every colour,
shape and motion (and, at the default 0.2, every colour-shape pair) appears in training. A training
set drawn from ``ToyWorld.sample`` does overlap the held-out prompts unless it keeps to
``training_specs()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# the detectors, re-exported: ``from eval.toybench import analyse_video, ...`` keeps working
from eval.toy_detectors import (  # noqa: F401
    NORMALISATION, PALETTE, PALETTE_NAMES, PALETTE_THRESHOLD, QUALITY_DIMENSIONS, SEMANTIC_DIMENSIONS,
    DetectedObject, VideoAnalysis, analyse_video, analyse_videos, classify_motion, classify_pixels, classify_shape,
    find_blobs,
)
from eval.toy_scores import FEATURE_STD_FLOOR, FEATURES, frechet_distance, score_video, video_features  # noqa: F401
from turbo.paths import safe_name
from turbo.toy.split import split_specs, stream_seed  # noqa: F401  (split_specs: re-exported for tests)
from turbo.toy.world import SceneSpec, ToyWorld, parse_caption

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

    def first_frames(self, prompts: Sequence[str], seed: int = 7) -> Tensor:
        """``B,3,H,W``: the first frame of a real clip of each prompt (a stream apart from the scored
        reference clips), what an image-to-video model is conditioned on ("from the true first frame")."""
        return torch.stack([self._render(p, "first frame", seed, 0)[0] for p in prompts])

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
                nfe: Mapping[str, int] | None = None, timing_batch: int = 4, seconds: Mapping[str, float] | None = None,
                timed_on: int | None = None) -> tuple[dict[str, dict], str]:
        """Score several samplers side by side on the held-out prompts (the end of ``turbo-train``).

        ``samplers``: name -> ``generate(prompts, seed)`` returning ``B,F,3,H,W`` in [0, 1]. Each is
        timed on its own after scoring (which is its warm-up): the median of 3 calls on the first
        ``timing_batch`` prompts, seconds per video of the whole call (sampling and decoding), unless
        ``seconds`` (name -> seconds per video, measured so on ``timed_on`` prompts by the caller:
        turbo-train's end of run) has it.
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
        seconds = dict(seconds or {})
        for name, generate in samplers.items():
            saved: list[tuple[str, Tensor]] = []

            def keep(prompts: list[str], s: int, generate=generate, saved=saved) -> Tensor:
                videos = generate(prompts, s)
                saved.extend(list(zip(prompts, videos))[: max(0, save_videos - len(saved))])
                return videos

            result = self.evaluate_generator(keep, videos_per_prompt=videos_per_prompt, seed=seed)
            if name not in seconds:
                seconds[name] = median_seconds(lambda: generate(timing_prompts, seed), warmup=0) / len(timing_prompts)
            rows[name] = {"quality": result.quality, "semantic": result.semantic, "total": result.total,
                          "sec_per_video": seconds[name], "nfe": None if nfe is None else nfe.get(name),
                          **{d: result.scores[d] for d in SEMANTIC_DIMENSIONS}}
            if out is not None:
                for i, (prompt, video) in enumerate(saved):
                    write_video(Path(out) / "toybench" / f"{safe_name(name)}_{i:02d}_{safe_name(prompt)}.mp4",
                                video, fps=fps)
                grid += [(f"{name}\n{prompt}", video) for prompt, video in saved[:3]]
        timed_on = timed_on if set(seconds) == set(samplers) and timed_on else len(timing_prompts)
        table = compare_table(rows, num_prompts=len(self.prompts), videos_per_prompt=videos_per_prompt, timed_on=timed_on)
        print(table)
        if out is not None:
            from turbo.atomic import atomic_write_text

            atomic_write_text(Path(out) / "toybench.md", table + "\n")
            if grid:
                from turbo.plots import plot_grid

                plot_grid(grid, Path(out) / "toybench_grid.png")
        return rows, table


def compare_table(rows: Mapping[str, Mapping[str, float]], num_prompts: int, videos_per_prompt: int,
                  timed_on: int = 4) -> str:
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
    lines.append(f"s / video: the median of 3 calls on {timed_on} prompt(s) after a warm-up, sampling and "
                 f"decoding; NFE: network evaluations per video (CFG counts 2 per step).")
    return "\n".join(lines)


def toybench_scores(videos, prompts: Sequence[str]) -> list[dict[str, float]]:
    """ToyBench's raw per-video scores of toy-world videos against their captions: one dict per video,
    {dimension: value in [0, 1]} for every dimension but the set-level ``distribution`` (the
    detectors of eval/toy_detectors.py, the scores of eval/toy_scores.py, as ToyBench.evaluate).
    ``videos``: F,3,H,W floats in [0, 1], a list or one B,F,3,H,W tensor (turbo-eval's metric input)."""
    from eval.harness.metrics import video_list

    videos = video_list(videos, "toybench_scores", prompts)
    analyses = analyse_videos([v.detach().float().cpu().clamp(0, 1) for v in videos])
    return [score_video(analysis, parse_caption(p)) for analysis, p in zip(analyses, prompts)]
