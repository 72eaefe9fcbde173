"""eval.harness.aggregate: the benchmarks' totals, checked by hand computations written independently
here, by published VBench leaderboard rows, and on files in the benchmarks' own formats."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from eval.harness.aggregate import (EVALCRAFTER_METRICS, VBENCH_DIMENSIONS, VBENCH_I2V_DIMENSIONS, MissingDimension,
                                    evalcrafter_total, parse_evalcrafter_logs, read_vbench_results, vbench_i2v_total,
                                    vbench_total)
from eval.harness.leaderboard import read_leaderboard_zip, write_leaderboard_zip

# The 16 dimensions in the leaderboard's column order, with scripts/constant.py's Min, Max and weight,
# written out again here so that a wrong constant in the module fails the hand computations.
T2V = [  # name, Min, Max, weight, quality (True) or semantic
    ("subject_consistency", 0.1462, 1.0, 1, True), ("background_consistency", 0.2615, 1.0, 1, True),
    ("temporal_flickering", 0.6293, 1.0, 1, True), ("motion_smoothness", 0.706, 0.9975, 1, True),
    ("dynamic_degree", 0.0, 1.0, 0.5, True), ("aesthetic_quality", 0.0, 1.0, 1, True),
    ("imaging_quality", 0.0, 1.0, 1, True), ("object_class", 0.0, 1.0, 1, False),
    ("multiple_objects", 0.0, 1.0, 1, False), ("human_action", 0.0, 1.0, 1, False), ("color", 0.0, 1.0, 1, False),
    ("spatial_relationship", 0.0, 1.0, 1, False), ("scene", 0.0, 0.8222, 1, False),
    ("appearance_style", 0.0009, 0.2855, 1, False), ("temporal_style", 0.0, 0.364, 1, False),
    ("overall_consistency", 0.0, 0.364, 1, False)]
NAMES = [t[0] for t in T2V]
FIXED = dict(zip(NAMES, [0.95, 0.96, 0.97, 0.98, 0.6, 0.55, 0.65, 0.85, 0.45, 0.9, 0.8, 0.4, 0.5, 0.22, 0.24, 0.26]))


def by_hand(scores: dict[str, float]) -> tuple[float, float, float]:
    """Quality, Semantic, Total as masked weighted means of the clipped-free min-max normalisation."""
    s = np.array([scores[n] for n in NAMES])
    lo, hi, w = (np.array([t[i] for t in T2V], dtype=float) for i in (1, 2, 3))
    is_q = np.array([t[4] for t in T2V])
    n = (s - lo) / (hi - lo)
    quality = float(n[is_q] @ w[is_q] / w[is_q].sum())
    semantic = float(n[~is_q] @ w[~is_q] / w[~is_q].sum())
    return quality, semantic, 0.8 * quality + 0.2 * semantic


def test_vbench_total_matches_a_hand_computation():
    out = vbench_total(FIXED)
    q, s, t = by_hand(FIXED)
    assert out["Quality"] == pytest.approx(q, abs=1e-12) and out["Semantic"] == pytest.approx(s, abs=1e-12)
    assert out["Total"] == pytest.approx(t, abs=1e-12)
    assert out["partial"] is False and out["missing"] == []
    assert set(VBENCH_DIMENSIONS) == set(NAMES) and len(VBENCH_DIMENSIONS) == 16
    # normalized is cal_final_score's weighted n_d, e.g. dynamic degree 0.6 * 0.5, scene 0.5 / 0.8222
    assert out["normalized"]["dynamic_degree"] == pytest.approx(0.3)
    assert out["normalized"]["scene"] == pytest.approx(0.5 / 0.8222)
    # no clipping: a score below Min normalises below 0
    assert vbench_total({**FIXED, "temporal_flickering": 0.5})["normalized"]["temporal_flickering"] < 0


# Published VBench leaderboard rows (per cent), columns as NAMES, then Total, Quality, Semantic.
# ModelScope, LaVie, VideoCrafter-2.0, CogVideoX-5B: Show-o2 (arXiv:2506.15564v3), Table 8;
# VideoCrafter-2.0, CogVideoX-5B, HunyuanVideo: Goku (arXiv:2502.04896), VBench table of its README;
# both tables reproduce the VBench leaderboard (HF Space Vchitect/VBench_Leaderboard).
PUBLISHED = {
    "ModelScope": ([89.87, 95.29, 98.28, 95.79, 66.39, 52.06, 58.57, 82.25, 38.98, 92.40, 81.72, 33.68, 39.26,
                    23.39, 25.37, 25.67], (75.75, 78.05, 66.54)),
    "LaVie": ([91.41, 97.47, 98.30, 96.38, 49.72, 54.94, 61.90, 91.82, 33.32, 96.80, 86.39, 34.09, 52.69, 23.56,
               25.93, 26.41], (77.08, 78.78, 70.31)),
    "VideoCrafter-2.0": ([96.85, 98.22, 98.41, 97.73, 42.50, 63.13, 67.22, 92.55, 40.66, 95.00, 92.92, 35.86, 55.29,
                          25.13, 25.84, 28.23], (80.44, 82.20, 73.42)),
    "CogVideoX-5B": ([96.23, 96.52, 98.66, 96.92, 70.97, 61.98, 62.90, 85.23, 62.11, 99.40, 82.81, 66.35, 53.20,
                      24.91, 25.38, 27.59], (81.61, 82.75, 77.04)),
    "HunyuanVideo": ([97.37, 97.76, 99.44, 98.99, 70.83, 60.36, 67.56, 86.10, 68.55, 94.40, 91.60, 68.68, 53.88,
                      19.80, 23.89, 26.44], (83.24, 85.09, 75.82)),
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_published_leaderboard_totals_reproduce(model):
    dims, (total, quality, semantic) = PUBLISHED[model]
    out = vbench_total({n: v / 100 for n, v in zip(NAMES, dims)})
    assert 100 * out["Total"] == pytest.approx(total, abs=0.01)
    assert 100 * out["Quality"] == pytest.approx(quality, abs=0.01)
    assert 100 * out["Semantic"] == pytest.approx(semantic, abs=0.01)


I2V = {"camera_motion": 0.35, "i2v_subject": 0.97, "i2v_background": 0.96, "subject_consistency": 0.95,
       "background_consistency": 0.97, "motion_smoothness": 0.98, "dynamic_degree": 0.4, "aesthetic_quality": 0.6,
       "imaging_quality": 0.7}


def test_vbench_i2v_total_matches_a_hand_computation():
    n = {k: v for k, v in I2V.items()}
    n["i2v_subject"] = (0.97 - 0.1462) / (1 - 0.1462)
    n["subject_consistency"] = (0.95 - 0.1462) / (1 - 0.1462)
    n["i2v_background"] = (0.96 - 0.2615) / (1 - 0.2615)
    n["background_consistency"] = (0.97 - 0.2615) / (1 - 0.2615)
    n["motion_smoothness"] = (0.98 - 0.706) / (0.9975 - 0.706)
    i2v = (0.1 * n["camera_motion"] + n["i2v_subject"] + n["i2v_background"]) / 2.1
    quality = (n["subject_consistency"] + n["background_consistency"] + n["motion_smoothness"]
               + 0.5 * n["dynamic_degree"] + n["aesthetic_quality"] + n["imaging_quality"]) / 5.5
    out = vbench_i2v_total(I2V)
    assert out["I2V"] == pytest.approx(i2v, abs=1e-12) and out["Quality"] == pytest.approx(quality, abs=1e-12)
    assert out["Total"] == pytest.approx((i2v + quality) / 2, abs=1e-12)
    assert set(VBENCH_I2V_DIMENSIONS) == set(I2V)
    with pytest.raises(ValueError, match="temporal_flickering"):  # not part of the I2V total
        vbench_i2v_total({**I2V, "temporal_flickering": 0.9})


EC = {"VQA_A": 55.5, "VQA_T": 60.25, "IS": 14.8, "clip_temp_score": 0.995, "warping_error": 0.0061,
      "face_consistency_score": 0.985, "action_score": 0.6, "motion_ac_score": 0.45, "flow_score": 4.2,
      "clip_score": 0.205, "blip_bleu": 0.23, "sd_score": 0.68, "detection_score": 0.55, "color_score": 0.42,
      "count_score": 0.4, "ocr_score": 0.8, "celebrity_id_score": 0.45}


def test_evalcrafter_total_matches_a_hand_computation():
    e = EC
    visual = 5 * (0.03004555 * e["VQA_A"] + 0.02887537 * e["VQA_T"] - 0.01382558 * e["IS"]) + 100 * 5 * 0.08707462696457707
    temporal = 100 * 5 * (2.92492244 * e["clip_temp_score"] + 0.45475678 * (1 - e["warping_error"])
                          + 0.17561504 * e["face_consistency_score"] - 3.42274050899774)
    motion = 100 * 5 * (-0.01641512 * e["action_score"] - 0.01340959 * e["motion_ac_score"]
                        - 0.10517075 * e["flow_score"] / 100 + 0.1297562020899355)
    align = 100 * (5 * np.dot([-0.0701577, 0.02561424, 0.05566109, 0.0173974, -0.020954, 0.03069167,
                               0.00372351, 0.22686202],
                              [e["clip_score"], e["blip_bleu"], e["sd_score"], e["detection_score"], e["color_score"],
                               e["count_score"], 1 - e["ocr_score"], 1 - e["celebrity_id_score"]])
                   - 0.30683181901390977)  # this intercept alone is not x5
    out = evalcrafter_total(EC)
    for key, want in [("Visual Quality", visual), ("Temporal Consistency", temporal), ("Motion Quality", motion),
                      ("Text-Video Alignment", align), ("Total", visual + temporal + motion + align)]:
        assert out[key] == pytest.approx(want, abs=1e-9), key
    assert out["partial"] is False
    assert EVALCRAFTER_METRICS == (  # eval_from_metrics.py's `metrics` list, in its order
        "VQA_A", "VQA_T", "IS", "clip_temp_score", "warping_error", "face_consistency_score", "action_score",
        "motion_ac_score", "flow_score", "clip_score", "blip_bleu", "sd_score", "detection_score", "color_score",
        "count_score", "ocr_score", "celebrity_id_score")


def test_missing_unknown_and_partial():
    less = {k: v for k, v in FIXED.items() if k not in ("scene", "color")}
    with pytest.raises(MissingDimension, match="color, scene") as err:
        vbench_total(less)
    assert "\n" not in str(err.value) and err.value.missing == ["color", "scene"]
    out = vbench_total(less, allow_partial=True)
    assert out["partial"] is True and out["missing"] == ["color", "scene"]
    assert out["Quality"] == pytest.approx(by_hand(FIXED)[0], abs=1e-12)  # quality untouched
    present = [t for t in T2V if not t[4] and t[0] in less]
    semantic = np.mean([(FIXED[n] - lo) / (hi - lo) for n, lo, hi, _, _ in present])  # renormalised over 7
    assert out["Semantic"] == pytest.approx(semantic, abs=1e-12)
    quality_only = vbench_total({n: FIXED[n] for n, *_, q in T2V if q}, allow_partial=True)
    assert quality_only["Semantic"] is None and quality_only["Total"] is None and quality_only["Quality"] is not None
    without_dynamic = vbench_total({k: v for k, v in FIXED.items() if k != "dynamic_degree"}, allow_partial=True)
    others = [(FIXED[n] - lo) / (hi - lo) for n, lo, hi, _, q in T2V if q and n != "dynamic_degree"]
    assert without_dynamic["Quality"] == pytest.approx(np.mean(others), abs=1e-12)  # weights over the 6 present
    with pytest.raises(ValueError, match="'subject consistency'"):
        vbench_total({**FIXED, "subject consistency": 0.9})
    with pytest.raises(ValueError, match="scene"):
        vbench_total({**FIXED, "scene": float("nan")})
    with pytest.raises(MissingDimension, match="i2v_subject"):
        vbench_i2v_total({k: v for k, v in I2V.items() if k != "i2v_subject"})
    i2v_part = vbench_i2v_total({k: v for k, v in I2V.items() if k not in ("camera_motion", "i2v_subject",
                                                                             "i2v_background")}, allow_partial=True)
    assert i2v_part["I2V"] is None and i2v_part["Total"] is None and i2v_part["Quality"] is not None
    no_ocr = {k: v for k, v in EC.items() if k != "ocr_score"}
    with pytest.raises(MissingDimension, match="ocr_score"):
        evalcrafter_total(no_ocr)
    ec_part = evalcrafter_total(no_ocr, allow_partial=True)
    assert ec_part["Text-Video Alignment"] is None and ec_part["Total"] is None and ec_part["partial"] is True
    assert ec_part["Visual Quality"] == pytest.approx(evalcrafter_total(EC)["Visual Quality"])
    with pytest.raises(ValueError, match="'fvd'"):
        evalcrafter_total({**EC, "fvd": 100.0})


def results_file(folder, name, scores):
    """A file in VBench's format: per-video results after the average (camera_motion: three elements)."""
    data = {}
    for dim, avg in scores.items():
        videos = [{"video_path": f"/videos/{dim}/a prompt-{i}.mp4", "video_results": avg} for i in range(2)]
        data[dim] = [avg, {"pan_left": avg, "static": avg}, videos] if dim == "camera_motion" else [avg, videos]
    path = folder / f"{name}_eval_results.json"
    path.write_text(json.dumps(data))
    (folder / f"{name}_full_info.json").write_text(json.dumps([{"prompt_en": "a prompt", "dimension": list(scores)}]))
    return path


def test_read_vbench_results(tmp_path):
    results_file(tmp_path, "a_quality", {n: FIXED[n] for n, *_, q in T2V if q})
    results_file(tmp_path, "b_semantic", {n: FIXED[n] for n, *_, q in T2V if not q})
    results_file(tmp_path, "c_rerun", {"scene": 0.61})  # later by name: overwrites
    scores = read_vbench_results(tmp_path)
    assert scores == {**FIXED, "scene": 0.61} and scores.source == str(tmp_path)
    (tmp_path / "i2v").mkdir()
    i2v = read_vbench_results(results_file(tmp_path / "i2v", "i2v", I2V))  # camera_motion: [avg, types, videos]
    assert i2v == I2V and vbench_i2v_total(i2v)["Total"] == pytest.approx(vbench_i2v_total(I2V)["Total"])
    (tmp_path / "c_rerun_eval_results.json").unlink()
    (tmp_path / "b_semantic_eval_results.json").unlink()
    with pytest.raises(MissingDimension, match=f"object_class.*{tmp_path}"):  # names the folder read
        vbench_total(read_vbench_results(tmp_path))
    bad = {"list": "[1, 2]", "nested": '{"scene": {"avg": 0.5}}', "string": '{"scene": ["0.5", []]}',
           "empty": "{}", "text": "not json {", "emptylist": '{"scene": []}'}
    for stem, text in bad.items():
        path = tmp_path / f"{stem}_eval_results.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=str(path)) as err:
            read_vbench_results(path)
        assert "\n" not in str(err.value) and "eval_results.json, {dimension" in str(err.value)
        path.unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        (tmp_path / "none").mkdir()
        read_vbench_results(tmp_path / "none")


def cal_final_score_reading(zip_path, into):
    """cal_final_score.submission's reading, redone here: extract, then os.listdir-style walk."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(into)
    upload = {}
    for entry in sorted(p for p in into.iterdir() if not p.name.startswith((".", "__"))):
        files = sorted(f for f in entry.iterdir() if f.name.endswith(".json")) if entry.is_dir() else (
            [entry] if entry.name.endswith("json") else [])
        for f in files:
            data = json.loads(f.read_text())
            if isinstance(data, dict):
                upload.update({k: v[0] for k, v in data.items()})
    return upload


def test_leaderboard_zip_round_trip(tmp_path):
    folder = tmp_path / "evaluation_results"
    folder.mkdir()
    results_file(folder, "model_quality", {n: FIXED[n] for n, *_, q in T2V if q})
    results_file(folder, "model_semantic", {n: FIXED[n] for n, *_, q in T2V if not q})
    from_folder = write_leaderboard_zip(folder, tmp_path / "out" / "folder.zip", "model")
    with zipfile.ZipFile(from_folder) as zf:  # top level, byte for byte (per-video results kept)
        assert sorted(zf.namelist()) == ["model_quality_eval_results.json", "model_semantic_eval_results.json"]
        assert zf.read("model_quality_eval_results.json") == (folder / "model_quality_eval_results.json").read_bytes()
    from_dict = write_leaderboard_zip(dict(FIXED), tmp_path / "out" / "dict.zip", "model")
    with zipfile.ZipFile(from_dict) as zf:
        assert zf.namelist() == ["model_eval_results.json"]
        assert json.loads(zf.read("model_eval_results.json"))["scene"] == [FIXED["scene"], []]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dict.zip", "folder.zip"]  # no temp files left
    want = vbench_total(FIXED)["Total"]
    for i, z in enumerate((from_folder, from_dict)):
        assert read_leaderboard_zip(z) == FIXED == cal_final_score_reading(z, tmp_path / f"x{i}")
        assert vbench_total(read_leaderboard_zip(z))["Total"] == want
    write_leaderboard_zip({"scene": 0.1}, from_dict, "model")  # replaces the old zip
    assert read_leaderboard_zip(from_dict) == {"scene": 0.1}
    with pytest.raises(ValueError, match="'__model"):
        write_leaderboard_zip(dict(FIXED), tmp_path / "bad.zip", "__model")
    # cal_final_score's rule: top level and one folder down, dicts only, '.'/'__' entries skipped
    odd = tmp_path / "odd.zip"
    with zipfile.ZipFile(odd, "w") as zf:
        zf.writestr("a_eval_results.json", json.dumps({"scene": [0.1, []], "color": [0.2, []]}))
        zf.writestr("a_full_info.json", json.dumps([{"prompt_en": "x"}]))
        zf.writestr("b/b_eval_results.json", json.dumps({"scene": [0.3, []]}))
        zf.writestr("b/c/deep_eval_results.json", json.dumps({"color": [0.9, []]}))
        zf.writestr("__MACOSX/m_eval_results.json", json.dumps({"human_action": [0.8, []]}))
        zf.writestr(".hidden_eval_results.json", json.dumps({"object_class": [0.7, []]}))
    assert read_leaderboard_zip(odd) == {"scene": 0.3, "color": 0.2} == cal_final_score_reading(odd, tmp_path / "o")
    with pytest.raises(MissingDimension, match="odd.zip"):
        vbench_total(read_leaderboard_zip(odd))


def test_parse_evalcrafter_logs(tmp_path):
    stamp = "2024-01-30 10:11:12"
    for metric in EVALCRAFTER_METRICS[3:]:
        lines = [f"{stamp} Vid: 000{i}.mp4,  Current {metric}: 0.1, Current avg. {metric}: 0.1,  " for i in range(3)]
        lines.append(f"{stamp} Final average {metric}: {EC[metric]}, Total videos: 700")
        (tmp_path / f"{metric}_record.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "IS_record.txt").write_text(f"{stamp} Inception score of videos: {EC['IS']}, std: 0.31.\n")
    (tmp_path / "dover.csv").write_text("path, aesthetic score, technical score, overall/final score\n"
                                        "0000, 50.000000, 61.000000,57.000000\n"
                                        f"Avg. scores: {EC['VQA_A']}, {EC['VQA_T']},58.1\n")
    (tmp_path / "final_result.txt").write_text(f"{stamp} Final average clip_score: 9.9, Total videos: 1\n")
    metrics = parse_evalcrafter_logs(tmp_path)
    assert metrics == EC
    assert evalcrafter_total(metrics)["Total"] == pytest.approx(evalcrafter_total(EC)["Total"])
    (tmp_path / "dover.csv").unlink()
    with pytest.raises(MissingDimension, match=f"VQA_A, VQA_T.*{tmp_path}"):
        evalcrafter_total(parse_evalcrafter_logs(tmp_path))
    broken = tmp_path / "clip_score_record.txt"
    broken.write_text(f"{stamp} Vid: 0000.mp4,  Current clip_score: 0.2,\n")  # killed before the Final line
    with pytest.raises(ValueError, match=f"{broken}.*Final average clip_score") as err:
        parse_evalcrafter_logs(tmp_path)
    assert "\n" not in str(err.value)
    broken.unlink()
    (tmp_path / "dover.csv").write_text("path, aesthetic score, technical score, overall/final score\n"
                                        "0000, 50.000000, 61.000000,57.000000\n")
    with pytest.raises(ValueError, match="dover.csv.*Avg. scores"):
        parse_evalcrafter_logs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        parse_evalcrafter_logs(tmp_path / "empty")
