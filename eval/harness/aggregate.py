"""Benchmark totals computed the way the benchmarks compute them: VBench, VBench-I2V and EvalCrafter.

The constants are the benchmarks' own numbers, written out here (their sources are named at each
block). VBench scores are fractions (the leaderboard shows them x100); EvalCrafter's aspects are on
the scale ``eval_from_metrics.py`` prints (about 0-100 each, Total their sum).

Unlike the benchmarks' scripts, a missing dimension is an error (:class:`MissingDimension`), never
a silent 0 or NaN; ``allow_partial=True`` averages what is there and marks the result ``partial``.

    scores = read_vbench_results("evaluation_results/")     # {dimension: average score}
    vbench_total(scores)["Total"]

The leaderboard's zip: eval/harness/leaderboard.py.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
from pathlib import Path
from typing import Callable, Mapping

# VBench (T2V): Vchitect/VBench scripts/constant.py (TASK_INFO, QUALITY_LIST, SEMANTIC_LIST,
# NORMALIZE_DIC, DIM_WEIGHT, QUALITY_WEIGHT, SEMANTIC_WEIGHT; identical at v0.1.5 and HEAD), with the
# results json's underscore names (cal_final_score.py maps them with key.replace('_', ' ')).
VBENCH_DIMENSIONS = (
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "dynamic_degree", "aesthetic_quality", "imaging_quality", "object_class", "multiple_objects",
    "human_action", "color", "spatial_relationship", "scene", "appearance_style", "temporal_style",
    "overall_consistency")
VBENCH_QUALITY = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                  "aesthetic_quality", "imaging_quality", "dynamic_degree")
VBENCH_SEMANTIC = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
                   "appearance_style", "temporal_style", "overall_consistency")
VBENCH_NORMALIZE = {  # (Min, Max)
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975), "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0), "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0), "human_action": (0.0, 1.0), "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0), "scene": (0.0, 0.8222), "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364), "overall_consistency": (0.0, 0.364)}
VBENCH_WEIGHTS = {d: (0.5 if d == "dynamic_degree" else 1) for d in VBENCH_DIMENSIONS}
VBENCH_QUALITY_WEIGHT, VBENCH_SEMANTIC_WEIGHT = 4, 1

# VBench-I2V: scripts/constant.py (TASK_INFO_I2V, I2V_LIST, I2V_QUALITY_LIST, NORMALIZE_DIC_I2V,
# DIM_WEIGHT_I2V, I2V_WEIGHT, I2V_QUALITY_WEIGHT), keyed by I2VKEY's keys (the results json's names),
# as cal_i2v_final_score.py reads them.
VBENCH_I2V_DIMENSIONS = ("camera_motion", "i2v_subject", "i2v_background", "subject_consistency",
                         "background_consistency", "motion_smoothness", "dynamic_degree", "aesthetic_quality",
                         "imaging_quality")
VBENCH_I2V_I2V = ("camera_motion", "i2v_subject", "i2v_background")
VBENCH_I2V_QUALITY = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
                      "aesthetic_quality", "imaging_quality")
VBENCH_I2V_NORMALIZE = {
    "camera_motion": (0.0, 1.0), "i2v_subject": (0.1462, 1.0), "i2v_background": (0.2615, 1.0),
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
    "motion_smoothness": (0.7060, 0.9975), "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0)}
VBENCH_I2V_WEIGHTS = {d: {"camera_motion": 0.1, "dynamic_degree": 0.5}.get(d, 1) for d in VBENCH_I2V_DIMENSIONS}
VBENCH_I2V_WEIGHT, VBENCH_I2V_QUALITY_WEIGHT = 1.0, 1.0

# EvalCrafter: evalcrafter/EvalCrafter eval_from_metrics.py (its `metrics` list, weights, intercepts).
EVALCRAFTER_METRICS = (
    "VQA_A", "VQA_T", "IS", "clip_temp_score", "warping_error", "face_consistency_score", "action_score",
    "motion_ac_score", "flow_score", "clip_score", "blip_bleu", "sd_score", "detection_score", "color_score",
    "count_score", "ocr_score", "celebrity_id_score")


# how a metric enters: as is; /100 (VQA_A, VQA_T on 0-100, IS, flow_score); 1 - x (errors: lower is better)
_raw, _per_cent, _one_minus = (lambda v: v), (lambda v: v / 100), (lambda v: 1 - v)
EVALCRAFTER_WEIGHT_SCALE = 5  # every weight vector is multiplied by 5
# aspect: ((metric, weight before x5, transform), ...), intercept (as added; x5 except Text-Video Alignment)
EVALCRAFTER_ASPECTS: dict[str, tuple[tuple[tuple[str, float, Callable[[float], float]], ...], float]] = {
    "Visual Quality": ((("VQA_A", 0.03004555, _per_cent), ("VQA_T", 0.02887537, _per_cent),
                        ("IS", -0.01382558, _per_cent)), 0.08707462696457707 * 5),
    "Text-Video Alignment": ((("clip_score", -0.0701577, _raw), ("blip_bleu", 0.02561424, _raw),
                              ("sd_score", 0.05566109, _raw), ("detection_score", 0.0173974, _raw),
                              ("color_score", -0.020954, _raw), ("count_score", 0.03069167, _raw),
                              ("ocr_score", 0.00372351, _one_minus), ("celebrity_id_score", 0.22686202, _one_minus)),
                             -0.30683181901390977),  # not x5 in eval_from_metrics.py
    "Motion Quality": ((("action_score", -0.01641512, _raw), ("motion_ac_score", -0.01340959, _raw),
                        ("flow_score", -0.10517075, _per_cent)), 0.1297562020899355 * 5),
    "Temporal Consistency": ((("clip_temp_score", 2.92492244, _raw), ("warping_error", 0.45475678, _one_minus),
                              ("face_consistency_score", 0.17561504, _raw)), -3.42274050899774 * 5),
}

RESULTS_FORMAT = "VBench's {name}_eval_results.json, {dimension: [average score, [per-video results], ...]}"


class MissingDimension(ValueError):
    """Scores lack dimensions (metrics) a total needs; the message names them and, where known, the file."""

    def __init__(self, bench: str, missing: list[str], source: str | None = None):
        self.missing, self.source = list(missing), source
        where = f" (read from {source})" if source else ""
        super().__init__(f"{bench}: missing {', '.join(self.missing)}{where}; "
                         "score them, or set allow_partial=true for a partial total")


class Scores(dict):
    """A ``dict[str, float]`` that remembers the file or folder it was read from (``source``), so that a
    total computed from it can name that file when a dimension is missing."""

    def __init__(self, data: Mapping[str, float] = (), source: str | None = None):
        super().__init__(data)
        self.source = source


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check(bench: str, scores: Mapping[str, float], names: tuple[str, ...], allow_partial: bool,
           source: str | None) -> list[str]:
    """Raise on unknown names and non-numbers, and (unless allow_partial) on missing names; return the missing."""
    source = source or getattr(scores, "source", None)
    where = f" (read from {source})" if source else ""
    unknown = sorted(set(scores) - set(names))
    if unknown:
        raise ValueError(f"{bench}: unknown name(s) {', '.join(map(repr, unknown))}{where}; "
                         f"expected some of: {', '.join(names)}")
    bad = [k for k in scores if not _is_number(scores[k])]
    if bad:
        raise ValueError(f"{bench}: not a finite number: {', '.join(f'{k}={scores[k]!r}' for k in bad)}{where}")
    missing = [n for n in names if n not in scores]
    if missing and not allow_partial:
        raise MissingDimension(bench, missing, source)
    return missing


def _weighted(bench: str, scores: Mapping[str, float], dimensions: tuple[str, ...],
              normalize: Mapping[str, tuple[float, float]], weights: Mapping[str, float],
              groups: Mapping[str, tuple[str, ...]], allow_partial: bool, source: str | None) -> dict:
    """cal_final_score's arithmetic: n_d = (s_d - Min)/(Max - Min) * w_d (no clipping), a group's score
    = sum n_d / sum w_d over its dimensions (over the present ones only, when partial; None if none)."""
    missing = _check(bench, scores, dimensions, allow_partial, source)
    normalized = {d: (scores[d] - normalize[d][0]) / (normalize[d][1] - normalize[d][0]) * weights[d]
                  for d in dimensions if d in scores}
    out: dict = {}
    for group, members in groups.items():
        present = [d for d in members if d in normalized]
        out[group] = sum([normalized[d] for d in present]) / sum([weights[d] for d in present]) if present else None
    return {**out, "normalized": normalized, "partial": bool(missing), "missing": missing}


def vbench_total(scores: Mapping[str, float], allow_partial: bool = False, *, source: str | None = None) -> dict:
    """VBench's Quality, Semantic and Total (fractions) from ``{dimension: average score}`` exactly as
    ``scripts/cal_final_score.py``: Total = (4 Quality + 1 Semantic) / 5.

    Returns ``{"Quality", "Semantic", "Total", "normalized": {dim: weighted n_d}, "partial", "missing"}``.
    A missing dimension raises :class:`MissingDimension` (cal_final_score would score it 0) unless
    ``allow_partial``; then a group averages its present dimensions, and a group with none, and the
    Total, are None. ``source`` (default ``scores.source``) names the file in error messages.
    """
    out = _weighted("VBench", scores, VBENCH_DIMENSIONS, VBENCH_NORMALIZE, VBENCH_WEIGHTS,
                    {"Quality": VBENCH_QUALITY, "Semantic": VBENCH_SEMANTIC}, allow_partial, source)
    out["Total"] = _weighted_mean((out["Quality"], VBENCH_QUALITY_WEIGHT), (out["Semantic"], VBENCH_SEMANTIC_WEIGHT))
    return out


def _weighted_mean(*pairs: tuple[float | None, float]) -> float | None:
    """sum(v w) / sum(w) over (value, weight) pairs; None when a value is (a partial group)."""
    if any(v is None for v, _ in pairs):
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def vbench_i2v_total(scores: Mapping[str, float], allow_partial: bool = False, *, source: str | None = None) -> dict:
    """VBench-I2V's I2V, Quality and Total (fractions) exactly as ``scripts/cal_i2v_final_score.py``:
    I2V = sum n / 2.1, Quality = sum n / 5.5, Total = (1.0 Quality + 1.0 I2V) / 2.0. Keys are the
    results json's names (``i2v_subject``, ``camera_motion``, ...); partial handling as :func:`vbench_total`.
    A name outside the I2V total (e.g. ``temporal_flickering``) is an error, as in cal_i2v_final_score.
    """
    out = _weighted("VBench-I2V", scores, VBENCH_I2V_DIMENSIONS, VBENCH_I2V_NORMALIZE, VBENCH_I2V_WEIGHTS,
                    {"I2V": VBENCH_I2V_I2V, "Quality": VBENCH_I2V_QUALITY}, allow_partial, source)
    out["Total"] = _weighted_mean((out["Quality"], VBENCH_I2V_QUALITY_WEIGHT), (out["I2V"], VBENCH_I2V_WEIGHT))
    return out


def evalcrafter_total(metrics: Mapping[str, float], allow_partial: bool = False, *,
                      source: str | None = None) -> dict:
    """EvalCrafter's four aspects and Total exactly as ``eval_from_metrics.py``, from the raw averages
    its logs hold (VQA_A/VQA_T 0-100, IS and flow_score raw, the rest as logged): per aspect
    100 * (sum (5 w_i) t_i(metric_i) + intercept); Total = Visual + Temporal + Motion + Alignment.

    Returns ``{"Visual Quality", "Text-Video Alignment", "Motion Quality", "Temporal Consistency",
    "Total", "partial", "missing"}``. With ``allow_partial`` an aspect missing any metric is None (and
    then Total); without, a missing metric raises :class:`MissingDimension`.
    """
    missing = _check("EvalCrafter", metrics, EVALCRAFTER_METRICS, allow_partial, source)
    out: dict = {}
    for aspect, (terms, intercept) in EVALCRAFTER_ASPECTS.items():
        if any(m not in metrics for m, _, _ in terms):
            out[aspect] = None
            continue
        dot = sum([(w * EVALCRAFTER_WEIGHT_SCALE) * f(metrics[m]) for m, w, f in terms])
        out[aspect] = (dot + intercept) * 100
    parts = [out[a] for a in ("Visual Quality", "Temporal Consistency", "Motion Quality", "Text-Video Alignment")]
    out["Total"] = None if None in parts else parts[0] + parts[1] + parts[2] + parts[3]
    return {**out, "partial": bool(missing), "missing": missing}


def _dimension_scores(data: object, where: str) -> dict[str, float]:
    """{dimension: value[0]} of a parsed results json; ValueError naming ``where`` if it is not that format."""
    if not isinstance(data, dict) or not data:
        got = "an empty dict" if data == {} else f"a JSON {type(data).__name__}"
        raise ValueError(f"{where}: expected {RESULTS_FORMAT}, got {got}")
    for key, value in data.items():
        if not (isinstance(value, list) and value and _is_number(value[0])):
            raise ValueError(f"{where}: expected {RESULTS_FORMAT}; {key!r} holds {json.dumps(value)[:60]}")
    return {key: float(value[0]) for key, value in data.items()}


def _load_json(text: str | bytes, where: str) -> object:
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({e}); expected {RESULTS_FORMAT}") from None


def read_vbench_results(path_or_folder: str | Path) -> Scores:
    """``{dimension: average score}`` from a VBench ``{name}_eval_results.json`` or from every
    ``*_eval_results.json`` in a folder (sorted by name, later files overwrite earlier ones).

    Works for VBench and VBench-I2V (camera_motion's ``[avg, per-type, per-video]`` too: the first
    element is the average). A file not in that format raises ValueError naming it; a folder without
    results files, FileNotFoundError naming the folder.
    """
    path = Path(path_or_folder)
    if path.is_dir():
        files = sorted(path.glob("*_eval_results.json"))
        if not files:
            raise FileNotFoundError(f"no VBench results (*_eval_results.json) in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no VBench results file or folder {path}")
    scores = Scores(source=str(path))
    for f in files:
        scores.update(_dimension_scores(_load_json(f.read_bytes(), str(f)), str(f)))
    return scores


def _parsed(parse: Callable[[], float], where: Path, expected: str) -> float:
    try:
        value = parse()
    except (IndexError, ValueError):
        raise ValueError(f"{where}: expected {expected}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: expected {expected}, got {value}")
    return value


def parse_evalcrafter_logs(results_folder: str | Path) -> Scores:
    """The raw metric averages from EvalCrafter's ``results/`` folder, by ``eval_from_metrics.py``'s rules:

    * every ``*.txt`` whose name lacks ``final_result``: the first of :data:`EVALCRAFTER_METRICS` (in that
      order) that occurs in its text gets the number after the first "Final" and ": ", up to ",", i.e.
      ``Final average {metric}: X, Total videos: N``;
    * a ``.txt`` whose name contains ``IS_``: IS = the number after the first ": " up to ","
      (``Inception score of ...: X, std: Y.``);
    * ``dover.csv``: its last row ``Avg. scores: A, T,O`` gives VQA_A = A, VQA_T = T.

    Files are read in sorted order (later overwrite earlier). A file that does not parse raises
    ValueError naming it; a folder with none of these files, FileNotFoundError naming it.
    """
    folder = Path(results_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no EvalCrafter results folder {folder}")
    metrics = Scores(source=str(folder))
    for f in sorted(folder.glob("*.txt")):
        if "final_result" in f.name:
            continue
        text = f.read_text(errors="replace")
        metric = next((m for m in EVALCRAFTER_METRICS if m in text), None)
        if metric is not None:
            metrics[metric] = _parsed(lambda: float(text.split("Final")[1].split(": ")[1].split(",")[0]), f,
                                      f"a line 'Final average {metric}: X, Total videos: N'")
        if "IS_" in f.name:
            metrics["IS"] = _parsed(lambda: float(text.split(": ")[1].split(",")[0]), f,
                                    "'Inception score of ...: X, std: Y.'")
    dover = folder / "dover.csv"
    if dover.is_file():
        with open(dover, newline="") as fh:
            rows = [row for row in csv.reader(fh)]
        last = rows[-1] if rows else []
        expected = "a last row 'Avg. scores: A, T,O' (DOVER's averages; did DOVER finish?)"
        if not (len(last) >= 2 and last[0].startswith("Avg. scores: ")):
            raise ValueError(f"{dover}: expected {expected}, got {','.join(last)[:60]!r}")
        metrics["VQA_A"] = _parsed(lambda: float(last[0].split(": ")[1]), dover, expected)
        metrics["VQA_T"] = _parsed(lambda: float(last[1]), dover, expected)
    if not metrics:
        raise FileNotFoundError(f"no EvalCrafter logs (*_record.txt, IS_record.txt, dover.csv) in {folder}")
    return metrics
