"""No file, config or number can take a turbo-train run over: crafted pickles, unknown keys,
traversal prompts, non-finite steps, bad videos, two runs on one folder, changed resumes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.checkpoint import LOCK, RunDir
from distill.train import TrainingStopped, optimise, run_training, setup
from tests.distill.test_train import cfg_for, metrics
from turbo.config import ConfigError
from turbo.video import write_video


def _strict_json_lines(path: Path) -> list[dict]:
    def refuse(token):
        raise AssertionError(f"{path}: bare {token} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _unfinished(run_dir: Path, *overrides) -> None:
    """A run killed after its last checkpoint: trained, then DONE removed."""
    run_training(cfg_for(*overrides), run_dir)
    (run_dir / "DONE").unlink()


# --- 2. nothing loaded runs code ------------------------------------------------------------------
class _Payload:
    """Unpickling this touches a file: the side effect the tests look for."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_in_training_state_is_refused_and_not_executed(tmp_path):
    run = tmp_path / "run"
    _unfinished(run, "train.steps=2", "train.checkpoint_every=2", "reward=none")
    state = run / "checkpoints" / "step_000002" / "training_state.pt"
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "evil": _Payload(marker)}, state)
    with pytest.raises(ConfigError, match=r"training_state\.pt: refused"):
        setup(cfg_for("train.steps=4", "train.checkpoint_every=2", "reward=none", "resume=true"), run)
    assert not marker.exists()


# --- 3. no path escapes the run directory; files get the umask's mode ------------------------------
def test_traversal_prompt_writes_inside_the_run_dir_with_umask_modes(tmp_path):
    run = tmp_path / "deep" / "er" / "run"
    evil = "x/../../../escaped"
    run_training(cfg_for(f"samples.prompts=['{evil}']", "train.steps=1", "reward=none"), run)
    # unsanitised, "student_00_x/../../../escaped.mp4" would land in tmp_path/deep/er/
    assert [p for p in tmp_path.rglob("*") if p.is_file() and run not in p.parents] == []
    assert any(p.name.startswith("student_00_x_escaped") for p in (run / "samples").iterdir())
    mask = os.umask(0)
    os.umask(mask)
    for p in [run / "student" / "pytorch_lora_weights.safetensors", *(run / "samples").glob("*.mp4")]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# --- 4. non-finite numbers never become a result ----------------------------------------------------
def test_a_diverging_run_stops_with_a_finite_last_checkpoint_and_no_done(tmp_path):
    run = tmp_path / "run"
    cfg = cfg_for("objective.optim.student.optimizer.lr=1e6", "train.steps=30", "train.checkpoint_every=1",
                  "train.max_nonfinite_steps=3", "reward=none")
    with pytest.raises(TrainingStopped, match=r"3 steps in a row .*non-finite.*max_nonfinite_steps=3.*last good checkpoint"):
        run_training(cfg, run)
    assert not (run / "DONE").exists() and not (run / "student").exists()
    rows = _strict_json_lines(run / "metrics.jsonl")
    assert rows[-1]["skipped/nonfinite"] >= 3
    assert None in (rows[-1]["student/loss"], rows[-1]["student/grad_norm"])  # non-finite -> null, not a bare NaN
    latest = RunDir(run).latest()
    assert latest is not None
    from safetensors.torch import load_file
    tensors = load_file(latest / "student" / "pytorch_lora_weights.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not (run / LOCK).exists()  # released on the way out


def test_a_non_finite_loss_leaves_parameters_and_optimizer_state_untouched():
    from accelerate import Accelerator

    from distill.objectives.base import Losses

    p = torch.nn.Parameter(torch.ones(3))

    class One:
        optim = {"student": {"grad_clip": 1.0}}

        def trainable(self):
            return {"student": [p]}

        def after_step(self, group):
            raise AssertionError("after_step (EMA updates) must not run on a skipped step")

    acc = Accelerator(cpu=True)
    clipped = []
    clip = acc.clip_grad_norm_
    acc.clip_grad_norm_ = lambda params, max_norm: clipped.append(max_norm) or clip(params, max_norm)
    opt = torch.optim.AdamW([p], lr=0.1)
    metrics = {}
    taken = optimise(One(), {"student": opt}, acc, "student", Losses({"l": (p * float("nan")).sum()}), metrics)
    assert not taken and torch.equal(p.detach(), torch.ones(3)) and not opt.state
    assert math.isnan(metrics["student/loss"])
    # accelerate's clip (which unscales fp16 gradients first), not torch's on the scaled ones
    assert clipped == [1.0]


# --- 5. a bad video never stops a run mid-epoch -----------------------------------------------------
@pytest.fixture
def video_folder(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    words = ["red circle moving right", "blue square moving up", "green triangle moving left"]
    lines = []
    for i in range(8):
        write_video(root / f"good_{i}.mp4", torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(i)))
        lines.append({"video": f"good_{i}.mp4", "caption": f"a {words[i % 3]}"})
    good = (root / "good_0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("these are my notes, not a video")
    write_video(root / "short.mp4", torch.rand(3, 3, 32, 32))
    for name in ("truncated", "empty", "notes", "short"):
        lines.insert(2, {"video": f"{name}.mp4", "caption": "a red square moving down"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def test_bad_videos_are_skipped_counted_and_resume_identically(tmp_path, video_folder):
    data = ["data=videos", f"data.root={video_folder}", "data.max_skip_fraction=0.5", "train.batch_size=2",
            "reward=none", "train.checkpoint_every=3"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_training(cfg_for(*data, "train.steps=6"), full)
    rows = metrics(full)
    assert (full / "DONE").is_file() and rows[-1]["data/skipped"] == 4
    log = (full / "data_skipped.log").read_text().splitlines()
    assert sorted(line.split("\t")[2].rsplit("/", 1)[-1] for line in log) == [
        "empty.mp4", "notes.mp4", "short.mp4", "truncated.mp4"]
    assert "data/skipped" in (full / "report.md").read_text()
    _unfinished(killed, *data, "train.steps=3")
    run_training(cfg_for(*data, "train.steps=6", "resume=true"), killed)
    assert [r["cd"] for r in metrics(killed)] == [r["cd"] for r in rows]
    assert metrics(killed)[-1]["data/skipped"] == 4


def test_too_many_bad_videos_stop_the_run_in_one_line(tmp_path, video_folder):
    with pytest.raises(TrainingStopped, match=r"data: \d+ of 12 videos are unusable.*data.max_skip_fraction=0.1"):
        run_training(cfg_for("data=videos", f"data.root={video_folder}", "data.max_skip_fraction=0.1",
                             "train.batch_size=4", "train.steps=3", "reward=none"), tmp_path / "run")


def test_data_verify_names_the_bad_files_before_training(tmp_path, video_folder):
    with pytest.raises(ValueError, match=r"data.verify: 4 of 12 videos are unusable: .*truncated\.mp4"):
        setup(cfg_for("data=videos", f"data.root={video_folder}", "data.verify=true"), tmp_path / "run")


def test_empty_captions_are_dropped_alike_in_every_dataset(tmp_path):
    from distill.data import PromptDataset, VideoFolderDataset

    write_video(tmp_path / "a.mp4", torch.rand(2, 3, 16, 16))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"video": "a.mp4", "caption": "a red circle"}) + "\n"
                                             + json.dumps({"video": "a.mp4", "caption": "  "}) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 item\(s\) with an empty caption: .*metadata.jsonl:2"):
        assert len(VideoFolderDataset(tmp_path, num_frames=2, height=16, width=16)) == 1
    with pytest.warns(UserWarning, match=r"skipped 1 item\(s\) with an empty caption: data.prompts\[1\]"):
        assert PromptDataset(prompts=["a red circle", ""]).prompts == ["a red circle"]


# --- 6. one run per run directory -----------------------------------------------------------------
def test_a_second_run_on_a_live_run_dir_is_refused_naming_the_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(ConfigError, match=rf"in use by turbo-train PID {holder.pid}"):
            run_training(cfg_for("train.steps=1"), run)
        assert (run / LOCK).exists() and not (run / "DONE").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match=rf"stale lock of PID {dead.pid}"):
        run_training(cfg_for("train.steps=1", "reward=none"), run)
    assert (run / "DONE").exists() and not (run / LOCK).exists()


def test_resume_removes_leftover_temporary_checkpoints(tmp_path):
    run = tmp_path / "run"
    _unfinished(run, "train.steps=2", "train.checkpoint_every=2", "reward=none")
    leftover = run / "checkpoints" / ".step_000004.abc123.tmp"
    leftover.mkdir()
    (leftover / "half.pt").write_bytes(b"\0" * 10)
    run_training(cfg_for("train.steps=4", "train.checkpoint_every=2", "reward=none", "resume=true"), run)
    assert not leftover.exists() and (run / "DONE").exists()


# --- 7. resume is checked -------------------------------------------------------------------------
def test_resume_with_a_changed_learning_rate_or_rank_is_refused_unless_allowed(tmp_path):
    run = tmp_path / "run"
    base = ["train.steps=2", "train.checkpoint_every=2", "reward=none"]
    _unfinished(run, *base)
    with pytest.raises(ConfigError, match=r"objective.optim.student.optimizer.lr \(0.0001 -> 0.001\).*resume_allow="):
        setup(cfg_for(*base, "train.steps=4", "resume=true", "objective.optim.student.optimizer.lr=1e-3"), run)
    with pytest.raises(ConfigError, match=r"student.rank \(8 -> 4\)"):
        setup(cfg_for(*base, "train.steps=4", "resume=true", "student.rank=4"), run)
    assert "lr: 0.0001" in (run / "config.yaml").read_text()  # the refused value was not written
    run_training(cfg_for(*base, "train.steps=4", "resume=true", "objective.optim.student.optimizer.lr=1e-3",
                         "resume_allow=[objective.optim.student.optimizer.lr]"), run)
    assert (run / "DONE").exists() and "lr: 0.001" in (run / "config.yaml").read_text()


def test_a_run_made_before_a_key_existed_resumes_at_that_keys_default(tmp_path):
    run = tmp_path / "run"
    base = ["train.steps=2", "train.checkpoint_every=2", "reward=none"]
    _unfinished(run, *base)
    config = run / "config.yaml"  # as an older turbo wrote it: no base_dtype key
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("base_dtype:")))
    with pytest.raises(ConfigError, match=r"base_dtype \(<absent> -> bfloat16\)"):  # a change is still a change
        setup(cfg_for(*base, "train.steps=4", "resume=true", "base_dtype=bfloat16"), run)
    run_training(cfg_for(*base, "train.steps=4", "resume=true"), run)  # the default: what the run did
    assert (run / "DONE").exists()


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    _unfinished(run, "train.steps=2", "train.checkpoint_every=2", "reward=none")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "cd": 0.1')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped its torn last line 3"):
        run_training(cfg_for("train.steps=3", "train.checkpoint_every=2", "reward=none", "resume=true"), run)
    assert [r["step"] for r in _strict_json_lines(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_finished_run_does_not_suggest_resume(tmp_path):
    run_training(cfg_for("train.steps=1", "reward=none"), tmp_path)
    with pytest.raises(ConfigError) as error:
        setup(cfg_for("train.steps=1"), tmp_path)
    assert "finished run" in str(error.value) and "resume=true" not in str(error.value)


# --- 8. every config key is known, every value in range ---------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("+train.lr=1e-3", r"train.lr: unknown key; train has batch_size, checkpoint_every"),
    ("+student.foo=1", r"student.foo: unknown key; student has alpha"),
    ("+video.fps=24", r"video.fps: unknown key; video has height, num_frames, width"),
    ("+model.foo=1", r"model.foo: unknown key; model has"),
    ("+data.foo=1", r"data.foo: unknown key; distill.data.ToyVideoDataset takes size"),
    ("+reward.clip.model.foo=1", r"reward.clip.model.foo: unknown key; rewards.clip.tiny_clip_reward takes"),
    ("+objective.optim.student.foo=1", r"objective.optim.student must have keys"),
    ("train.keep_checkpoints=0", r"train.keep_checkpoints=0: expected an integer >= 1"),
    ("train.checkpoint_every=0", r"train.checkpoint_every=0: expected an integer >= 1"),
    ("train.batch_size=0", r"train.batch_size=0: expected an integer >= 1"),
    ("device=banana", r"device='banana': expected auto, cpu, cuda, cuda:N or mps"),
    ("student.rank=-1", r"student.rank=-1: expected a LoRA rank >= 1"),
    ("precision=fp16", r"precision=fp16 is not supported on a CPU"),
    ("samples.prompts=[]", r"samples.prompts=\[\]: expected a non-empty list"),
])
def test_unknown_keys_and_out_of_range_values_are_refused_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        setup(cfg_for(override, "device=cpu" if override.startswith("precision") else "seed=0"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- 9. messages a user can act on ------------------------------------------------------------------
def test_cli_config_errors_print_one_line(tmp_path):
    exe = Path(sys.executable).parent / "turbo-train"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out = subprocess.run([str(exe), "experiment=smoke", "+train.lr=1e-3", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("turbo-train: error: train.lr: unknown key"), out.stderr


def test_a_reward_for_an_objective_that_cannot_use_it_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError, match=r"objective=diffusion makes no student prediction .* reward terms \['clip'\]"):
        setup(cfg_for("objective=diffusion"), tmp_path / "run")
