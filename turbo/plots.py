"""The run's pictures: training curves (``curves.png``) from metrics.jsonl rows, and sample grids.

Collapse and reward hacking show in the curves while they happen: the losses fall, the reward
scores (``score/*``) climb, and the validation probe (``val/*``: held-out prompts sampled by the
student and scored by the run's benchmark, which shares nothing with the rewards) falls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from turbo.atomic import atomic_file  # noqa: E402

PANELS = (("losses", lambda k: k.endswith("/loss") or k.startswith("reward/")),
          ("reward scores (training)", lambda k: k.startswith("score/")),
          ("validation probe (held-out prompts)", lambda k: k.startswith("val/")))


def _save(fig, path: Path) -> Path:
    try:
        with atomic_file(path) as tmp:  # a plot is either whole or absent
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_curves(rows: Sequence[Mapping[str, float]], path: str | Path) -> Path | None:
    """One panel per kind of metric (losses, reward scores, probe) against the step; None when
    there is nothing to plot. Non-finite values are gaps."""
    panels = []
    for title, wanted in PANELS:
        keys = sorted({k for r in rows for k in r if wanted(k)})
        if keys:
            panels.append((title, keys))
    if not rows or not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
                      and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), label=key, marker="o" if title.startswith("validation") else None,
                        markersize=3)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    return _save(fig, Path(path))


def plot_bands(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], path: str | Path,
               ylabel: str = "", xlabel: str = "step", levels: Mapping[str, float] | None = None) -> Path:
    """One line per label, ``(x, mean, sd)``, with a band of mean +- sd (a sweep's arms over seeds);
    ``levels``: dashed horizontal reference lines (e.g. each teacher's score)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, value in (levels or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey")
        ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), fontsize=6, color="grey",
                    xytext=(2, 2), textcoords="offset points")
    for label, (x, mean, sd) in series.items():
        line, = ax.plot(x, mean, marker="o", markersize=3, label=label)
        ax.fill_between(x, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_grid(rows: Sequence[tuple[str, Tensor]], path: str | Path) -> Path:
    """A picture of videos: one row per (label, ``F,3,H,W`` video in [0, 1]), one column per frame."""
    if not rows:
        raise ValueError("plot_grid: expected at least one video")
    frames = max(v.shape[0] for _, v in rows)
    fig, axes = plt.subplots(len(rows), frames, figsize=(0.7 * frames + 3.2, 0.75 * len(rows) + 0.3), squeeze=False)
    for r, (label, video) in enumerate(rows):
        for c in range(frames):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < video.shape[0]:
                ax.imshow(video[c].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for c in range(frames):
        axes[0, c].set_title(f"frame {c}", fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.1)
    return _save(fig, Path(path))


def plot_bars(groups: Mapping[str, Mapping[str, float]], path: str | Path, ylabel: str = "score") -> Path:
    """Grouped bars: one group per dimension, one bar per label (``groups[label][dimension]``), e.g.
    the teacher against its students on every VBench dimension. A dimension a label lacks is no bar."""
    if not groups:
        raise ValueError("plot_bars: expected at least one labelled set of scores")
    dims = list(dict.fromkeys(d for scores in groups.values() for d in scores))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(dims) * max(1, len(groups)) ** 0.5 + 2), 4))
    for i, (label, scores) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j, d in enumerate(dims) if d in scores]
        ax.bar(xs, [scores[d] for d in dims if d in scores], width=width, label=label)
    ax.set_xticks(range(len(dims)))
    ax.set_xticklabels([d.replace("_", " ") for d in dims], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=min(len(groups), 3), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_against(series: Mapping[str, Sequence[tuple[str, float]]], path: str | Path, xlabel: str,
                 ylabel: str) -> Path:
    """A metric against one swept setting: one line per label of ``(setting value, metric)`` points,
    in the order given (settings may be names: objective=cd, dmd2, ...)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ticks = list(dict.fromkeys(x for points in series.values() for x, _ in points))
    for label, points in series.items():
        ax.plot([ticks.index(x) for x, _ in points], [y for _, y in points], marker="o", label=label)
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))
