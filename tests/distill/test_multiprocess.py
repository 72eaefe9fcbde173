"""Multi-process training on CPU (gloo): 2 processes train what 1 process trains on the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest

from distill.train import run_training
from tests.distill.test_train import cfg_for, metrics

COMMON = ["experiment=smoke", "device=cpu", "train.batch_size=2", "train.checkpoint_every=2"]
KEYS = ("student/loss", "student/grad_norm", "cd", "score/clip")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run_dir, *overrides, processes: int = 2) -> str:
    """turbo-train on ``processes`` CPU processes (torch.distributed.run, gloo); returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                          f"--master_port={_port()}", "-m", "distill.train", *COMMON, f"hydra.run.dir={run_dir}",
                          *overrides], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    path = tmp_path_factory.mktemp("single")
    run_training(cfg_for(*COMMON[1:], "train.steps=4"), path)
    return path


def test_two_processes_train_what_one_does_and_only_rank_0_writes(tmp_path, single):
    out = launch(tmp_path / "two", "train.steps=4")
    assert out.count("run directory:") == 2  # both ranks ran the whole job
    two = metrics(tmp_path / "two")
    assert all(r["processes"] == 2 for r in two) and "processes" not in metrics(single)[0]
    for key in KEYS:  # float reductions in another order: a few ulps of the loss, not more
        assert [r[key] for r in two] == pytest.approx([r[key] for r in metrics(single)], rel=1e-4, abs=1e-6), key
    hydra = {".hydra", "train.log"}  # Hydra's own, absent from the in-process run
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name not in hydra) == sorted(
        p.name for p in single.iterdir())
    assert json.loads((tmp_path / "two" / "DONE").read_text())["steps"] == 4


@pytest.mark.parametrize("resume_on", [1, 2])
def test_a_two_process_checkpoint_resumes_on_one_or_two_processes(tmp_path, single, resume_on):
    launch(tmp_path / "run", "train.steps=2")
    (tmp_path / "run" / "DONE").unlink()  # as if killed after its step-2 checkpoint
    launch(tmp_path / "run", "train.steps=4", "resume=true", "resume_allow=[train.steps]", processes=resume_on)
    resumed = metrics(tmp_path / "run")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in KEYS:
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in metrics(single)], rel=1e-4, abs=1e-6), key


def test_the_explicit_gradient_all_reduce_equals_ddps(tmp_path):
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_port()}", worker, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for grads in ranks:
        assert len(grads["ours"]) == len(grads["ddp"]) > 0 and any(g.abs().max() > 0 for g in grads["ours"])
        for ours, ddp in zip(grads["ours"], grads["ddp"]):
            torch.testing.assert_close(ours, ddp, rtol=1e-5, atol=1e-8)
    for a, b in zip(ranks[0]["ours"], ranks[1]["ours"]):  # averaged: the same on both ranks
        torch.testing.assert_close(a, b, rtol=0, atol=0)
