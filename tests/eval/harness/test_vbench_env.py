"""The vbench environment: clear one-line errors without one, and (marker ``vbench``) scores that equal
VBench's own API called directly in the same env."""

import json
import os
import shutil
import socket
import subprocess
import textwrap

import pytest
import torch

from eval.harness import vbench_env
from eval.harness.vbench_env import MARKER, PINS, VBenchEnvError, check, missing_checkpoints, score


def _one_line_naming(error: pytest.ExceptionInfo, *names) -> str:
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


def _fake_env(root, pins=PINS):
    """An env whose 'python' is a shell script that logs its arguments and succeeds (so import vbench 'works')."""
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{root}/calls.txt"\n')
    python.chmod(0o755)
    (root / MARKER).write_text(json.dumps({"pins": pins}))
    return root


def test_check_names_a_missing_env_and_how_to_create_it(tmp_path):
    with pytest.raises(VBenchEnvError) as error:
        check(tmp_path / "nowhere")
    message = _one_line_naming(error, tmp_path / "nowhere")
    assert message.startswith("no vbench environment at") and "setup" in message


def test_check_names_an_env_without_python(tmp_path):
    (tmp_path / "env").mkdir()
    with pytest.raises(VBenchEnvError) as error:
        check(tmp_path / "env")
    _one_line_naming(error, tmp_path / "env" / "bin" / "python", "broken")


def test_check_rejects_an_env_built_with_other_pins(tmp_path):
    env = _fake_env(tmp_path / "env", pins=["vbench==0.1.4"])
    with pytest.raises(VBenchEnvError) as error:
        check(env)
    _one_line_naming(error, env, "pins")
    (env / MARKER).unlink()
    with pytest.raises(VBenchEnvError, match="pins"):
        check(env)
    (env / MARKER).write_text(json.dumps({"pins": PINS}))
    assert check(env) == env / "bin" / "python"


def test_check_shows_the_last_line_of_a_failing_import(tmp_path):
    env = _fake_env(tmp_path / "env")
    (env / "bin" / "python").write_text("#!/bin/sh\necho 'Traceback' >&2\necho \"ModuleNotFoundError: no 'vbench'\" >&2\n"
                                        "exit 1\n")
    with pytest.raises(VBenchEnvError) as error:
        check(env)
    assert _one_line_naming(error, env).endswith(f"vbench_env setup {env})")
    assert "ModuleNotFoundError: no 'vbench'" in str(error.value) and "Traceback" not in str(error.value)


def test_missing_checkpoints_names_the_file_each_dimension_needs(tmp_path):
    assert missing_checkpoints(["temporal_flickering"], tmp_path) == []
    assert missing_checkpoints(["dynamic_degree"], tmp_path) == [
        f"dimension dynamic_degree needs {tmp_path}/raft_model/models/raft-things.pth "
        "(not found; stage it beforehand: nothing is downloaded)"]
    (tmp_path / "raft_model" / "models").mkdir(parents=True)
    (tmp_path / "raft_model" / "models" / "raft-things.pth").write_bytes(b"")
    assert missing_checkpoints(["dynamic_degree", "temporal_flickering"], tmp_path) == []
    assert len(missing_checkpoints(["aesthetic_quality", "subject_consistency"], tmp_path)) == 4


def test_score_with_a_missing_checkpoint_fails_before_running_anything(tmp_path):
    env = _fake_env(tmp_path / "env")
    with pytest.raises(VBenchEnvError) as error:
        score(tmp_path / "videos", tmp_path / "out", ["temporal_flickering", "dynamic_degree"], env=env,
              cache_dir=tmp_path / "cache")
    _one_line_naming(error, tmp_path / "cache" / "raft_model" / "models" / "raft-things.pth")
    assert "vbench_worker" not in (env / "calls.txt").read_text()  # only check()'s import probe ran
    assert not (tmp_path / "out").exists()


def test_score_reports_a_failing_worker_with_its_log(tmp_path):
    env = _fake_env(tmp_path / "env")
    (env / "bin" / "python").write_text("#!/bin/sh\ncase \"$*\" in *vbench_worker*) echo 'it broke' >&2; exit 3;; "
                                        "*VBench_full_info*) echo /dev/null;; esac\n")
    with pytest.raises(VBenchEnvError) as error:
        score(tmp_path / "videos", tmp_path / "out", ["temporal_flickering"], env=env, full_info=tmp_path / "f.json")
    _one_line_naming(error, tmp_path / "out" / "results_eval_results.json", "it broke", "exited 3",
                     tmp_path / "out" / "vbench_worker.log")
    assert "it broke" in (tmp_path / "out" / "vbench_worker.log").read_text()


# --- end to end, in a real vbench env -----------------------------------------------------------------

def _toy_videos(folder):
    """16 frames 64x64: a black/white flicker, a moving square, a static frame."""
    from turbo.video import write_video
    folder.mkdir()
    flicker = torch.zeros(16, 3, 64, 64)
    flicker[::2] = 1.0
    square = torch.zeros(16, 3, 64, 64)
    for t in range(16):
        square[t, :, 20:36, 4 + 2 * t:20 + 2 * t] = 1.0
    static = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(16, 3, 64, 64)
    for name, video in (("a flickering light", flicker), ("a moving square", square), ("a still frame", static)):
        write_video(folder / f"{name}.mp4", video)
    return folder


def _network_is_up() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def vbench_python():
    """The env at default_env() ($TURBO_VBENCH_ENV), created once if absent (minutes; CI builds it)."""
    env = vbench_env.default_env()
    try:
        vbench_env.setup(env)
    except VBenchEnvError as error:
        if not os.environ.get("CI") and not _network_is_up():
            pytest.skip(f"cannot create the vbench environment without network: {error}")
        raise
    return check(env)


@pytest.mark.vbench
@pytest.mark.timeout(2400)
def test_harness_scores_equal_vbenchs_own_api(tmp_path, vbench_python):
    videos = _toy_videos(tmp_path / "videos")
    results = score(videos, tmp_path / "out", ["temporal_flickering"], mode="custom_input", name="toy")
    assert results == tmp_path / "out" / "toy_eval_results.json"
    ours = json.loads(results.read_text())

    env = vbench_python.parent.parent
    direct = textwrap.dedent(f"""
        import torch
        from vbench import VBench
        VBench(torch.device("cpu"), {str(vbench_env.full_info_path(env))!r}, {str(tmp_path / "ref")!r}).evaluate(
            {str(videos)!r}, "ref", dimension_list=["temporal_flickering"], mode="custom_input")
        """)
    (tmp_path / "ref").mkdir()
    subprocess.run([str(vbench_python), "-c", direct], cwd=tmp_path / "ref", check=True, capture_output=True)
    reference = json.loads((tmp_path / "ref" / "ref_eval_results.json").read_text())
    assert ours == reference

    average, per_video = ours["temporal_flickering"]
    by_name = {os.path.basename(v["video_path"]): v["video_results"] for v in per_video}
    assert set(by_name) == {"a flickering light.mp4", "a moving square.mp4", "a still frame.mp4"}
    assert average == pytest.approx(sum(by_name.values()) / 3)
    assert by_name["a flickering light.mp4"] < 0.1 < 0.9 < by_name["a still frame.mp4"]
    assert by_name["a flickering light.mp4"] < by_name["a moving square.mp4"] <= by_name["a still frame.mp4"]


@pytest.mark.vbench
@pytest.mark.timeout(2400)
def test_turbo_eval_runs_temporal_flickering_end_to_end_on_toy_videos(tmp_path, vbench_python):
    """turbo-eval suite=vbench: the toy teacher samples a VBench-format suite, VBench's own code in its
    environment scores temporal_flickering, and the harness's results file equals what VBench's API
    writes for the same videos when called directly."""
    from hydra import compose, initialize_config_module

    from eval.harness.leaderboard import read_leaderboard_zip
    from eval.harness.app import run

    prompts = ["a red circle moving right", "a blue square standing still", "a green triangle moving up"]
    full_info = tmp_path / "full_info.json"
    full_info.write_text(json.dumps([{"prompt_en": p, "dimension": ["temporal_flickering"]} for p in prompts]))
    env = vbench_python.parent.parent
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("eval", overrides=["suite=vbench", f"suite.full_info={full_info}", "suite.videos_per_prompt=2",
                                         "suite.dimensions=[temporal_flickering]", "allow_partial=true", "device=cpu",
                                         "sampler.teacher.steps=4", f"vbench.env={env}"])
    out = tmp_path / "eval"
    result = run(cfg, out)
    ours = json.loads((out / "scores" / "vbench" / "vbench_eval_results.json").read_text())
    assert sorted(os.path.basename(v["video_path"]) for v in ours["temporal_flickering"][1]) == \
        sorted(f"{p}-{i}.mp4" for p in prompts for i in range(2))
    direct = textwrap.dedent(f"""
        import torch
        from vbench import VBench
        VBench(torch.device("cpu"), {str(full_info)!r}, {str(tmp_path / "ref")!r}).evaluate(
            {str(out / "videos")!r}, "vbench", dimension_list=["temporal_flickering"], mode="vbench_standard")
        """)
    (tmp_path / "ref").mkdir()
    subprocess.run([str(vbench_python), "-c", direct], cwd=tmp_path / "ref", check=True, capture_output=True)
    assert ours == json.loads((tmp_path / "ref" / "vbench_eval_results.json").read_text())
    assert result["dimensions"] == {"temporal_flickering": ours["temporal_flickering"][0]}
    assert result["partial"] and result["aggregate"]["Semantic"] is None and result["aggregate"]["Total"] is None
    assert 0 < result["aggregate"]["Quality"] <= 1
    assert read_leaderboard_zip(out / "leaderboard.zip") == result["dimensions"]


@pytest.mark.vbench
@pytest.mark.timeout(2400)
def test_vbench_long_scores_the_mean_of_its_clips_by_vbenchs_own_api_and_leaves_the_videos_alone(tmp_path, vbench_python):
    """6 s videos (VBench-Long's territory): VBench-Long's code splits each into three 2 s clips and
    its per-video score is the mean of what VBench's own API gives those clips; the sampled folder
    gets none of VBench-Long's clip folders."""
    from turbo.video import write_video

    prompts = ["a flickering light", "a moving square"]
    full_info = tmp_path / "full_info.json"
    full_info.write_text(json.dumps([{"prompt_en": p, "dimension": ["temporal_flickering"]} for p in prompts]))
    videos = tmp_path / "videos"
    videos.mkdir()
    flicker = torch.zeros(48, 3, 64, 64)
    flicker[::2] = 1.0
    square = torch.zeros(48, 3, 64, 64)
    for t in range(48):
        square[t, :, 20:36, t:t + 16] = 1.0
    for name, video in zip(prompts, (flicker, square)):
        write_video(videos / f"{name}-0.mp4", video, fps=8)
    before = sorted(p.name for p in videos.iterdir())
    results = score(videos, tmp_path / "out", ["temporal_flickering"], mode="long_vbench_standard", name="long",
                    full_info=full_info, long=True, videos_per_prompt=1)
    assert sorted(p.name for p in videos.iterdir()) == before
    ours = json.loads(results.read_text())

    # VBench-Long's per-video score is the mean of its 2 s clips' scores: score the clips with plain
    # VBench (custom_input) and compare
    clips = sorted((tmp_path / "out" / "long_long_input" / "split_clip").glob("*/*.mp4"))
    assert sorted(c.name for c in clips) == sorted(f"{p}-0_{k:03d}.mp4" for p in prompts for k in range(3))  # 6 s / 2 s
    flat = tmp_path / "clips"
    flat.mkdir()
    for clip in clips:
        shutil.copy(clip, flat / clip.name)
    (tmp_path / "ref").mkdir()
    direct = textwrap.dedent(f"""
        import torch
        from vbench import VBench
        VBench(torch.device("cpu"), {str(full_info)!r}, {str(tmp_path / "ref")!r}).evaluate(
            {str(flat)!r}, "ref", dimension_list=["temporal_flickering"], mode="custom_input")
        """)
    subprocess.run([str(vbench_python), "-c", direct], cwd=tmp_path / "ref", check=True, capture_output=True)
    per_clip = {os.path.basename(v["video_path"]): v["video_results"]
                for v in json.loads((tmp_path / "ref" / "ref_eval_results.json").read_text())["temporal_flickering"][1]}
    average = ours["temporal_flickering"][0]
    per_video = {os.path.basename(v["video_path"]): v["video_results"] for v in ours["temporal_flickering"][2]}
    assert set(per_video) == {f"{p}-0.mp4" for p in prompts}
    for p in prompts:
        mine = [per_clip[f"{p}-0_{k:03d}.mp4"] for k in range(3)]
        assert per_video[f"{p}-0.mp4"] == pytest.approx(sum(mine) / 3, abs=1e-12)
    assert average == pytest.approx(sum(per_clip.values()) / 6, abs=1e-12)
    assert per_video["a flickering light-0.mp4"] < 0.1 < 0.9 < per_video["a moving square-0.mp4"]
