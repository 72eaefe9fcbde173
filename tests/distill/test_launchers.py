"""launcher=slurm's code path, run here by submitit's local executor; a requeued job resumes."""

import os
import subprocess
import sys

import pytest

from distill.train import run_training
from tests.distill.test_train import cfg_for, metrics

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def submit(sweep_dir, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "distill.train", "-m", "launcher=submitit_local", "experiment=smoke",
                          "device=cpu", f"hydra.sweep.dir={sweep_dir}", *overrides],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_a_requeued_submitit_job_resumes_from_its_run_dir(tmp_path):
    whole = tmp_path / "whole"
    run_training(cfg_for("train.steps=4", "train.checkpoint_every=2"), whole)
    # a job preempted after its step-2 checkpoint: its run dir (the sweep's job 0) without DONE
    job = tmp_path / "sweep" / "0"
    run_training(cfg_for("train.steps=2", "train.checkpoint_every=2"), job)
    (job / "DONE").unlink()
    submit(tmp_path / "sweep", "train.steps=4", "train.checkpoint_every=2")  # the requeue: resume=auto
    assert (job / "DONE").is_file() and list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit ran it
    rows = metrics(job)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["student/loss"] for r in rows] == pytest.approx([r["student/loss"] for r in metrics(whole)], rel=1e-6, abs=1e-7)


def test_resume_auto_starts_a_fresh_run_and_refuses_a_finished_one(tmp_path):
    from turbo.config import ConfigError

    run_training(cfg_for("train.steps=1", "resume=auto"), tmp_path / "fresh")  # nothing to resume: starts
    assert (tmp_path / "fresh" / "DONE").is_file()
    with pytest.raises(ConfigError, match="resume=auto but .* holds a finished run"):
        run_training(cfg_for("train.steps=1", "resume=auto"), tmp_path / "fresh")
