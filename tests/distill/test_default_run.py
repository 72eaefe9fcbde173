"""The embedded default, as a user runs it (`turbo-train`, no arguments), shortened: the shipped toy
teacher, CD + the toy reward, ending with ToyBench teacher vs student printed side by side."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from turbo.video import video_info


@pytest.mark.slow
def test_turbo_train_default_distils_the_shipped_teacher_and_prints_toybench(tmp_path):
    exe = Path(sys.executable).parent / "turbo-train"
    args = ["train.steps=3", "train.checkpoint_every=3", "eval.num_prompts=2", "eval.reference_per_prompt=2",
            "samples.teacher_steps=3", "samples.prompts=[a red circle moving right]", f"hydra.run.dir={tmp_path}/run"]
    r = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.model.name == "toy_t2v" and "toy_image" in cfg.reward and "toy_video" in cfg.reward
    assert cfg.objective._target_.endswith("ConsistencyDistillation")
    out = r.stdout
    assert "ToyBench on 2 held-out prompts" in out
    assert "| teacher, 3 steps" in out and "| student, 4 steps" in out
    done = json.loads((run / "DONE").read_text())
    assert len(done["eval"]) == 3
    for video in (run / "eval" / "toybench").glob("*.mp4"):
        info = video_info(video)
        assert (info.frames, info.height, info.width) == (9, 32, 32)
    assert {"reward/toy_image", "reward/toy_video"} <= set(json.loads((run / "metrics.jsonl").read_text().splitlines()[0]))
