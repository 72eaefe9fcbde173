"""Multi-process training on CPU (gloo): 2 processes train what 1 process trains on the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from distill.train import run_training
from tests.distill.test_train import cfg_for, metrics

COMMON = ["experiment=smoke", "device=cpu", "train.batch_size=2", "train.checkpoint_every=2"]
AUTO = ["device=auto"]  # the config's default: on a machine without CUDA it must still make one process group
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


@pytest.mark.parametrize("device", [[], AUTO], ids=["device_cpu", "device_auto"])
def test_two_processes_train_what_one_does_and_only_rank_0_writes(tmp_path, single, device):
    if device and torch.cuda.is_available():
        pytest.skip("device=auto picks the GPU here")
    out = launch(tmp_path / "two", "train.steps=4", *device)
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


# --- train.fsdp=true: the base sharded over the processes (distill/fsdp.py) --------------------------
def _shares(out: str) -> list[float]:
    """Each process's printed share of the backbone's parameters."""
    return [float(line.rsplit("(", 1)[1].rstrip(")")) for line in out.splitlines() if line.startswith("fsdp: process")]


@pytest.mark.parametrize("extra", [[], ["train.gradient_checkpointing=true"]], ids=["plain", "checkpointed"])
def test_fsdp_shards_the_base_and_trains_what_one_process_does(tmp_path, single, extra):
    out = launch(tmp_path / "fsdp", "train.steps=4", "train.fsdp=true", *extra)
    shares = _shares(out)
    assert len(shares) == 2 and all(0.45 < s < 0.55 for s in shares), shares  # each rank holds half
    assert out.count("run directory:") == 2
    two = metrics(tmp_path / "fsdp")
    for key in KEYS:
        assert [r[key] for r in two] == pytest.approx([r[key] for r in metrics(single)], rel=1e-4, abs=1e-6), key
    # the student written at the end is the whole LoRA, equal to the unsharded run's
    from safetensors.torch import load_file

    ours, theirs = (load_file(p / "student" / "pytorch_lora_weights.safetensors") for p in (tmp_path / "fsdp", single))
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for k in ours:
        assert ours[k].shape == theirs[k].shape
        assert torch_close(ours[k], theirs[k]), k


def torch_close(a, b) -> bool:
    """Equal up to float reordering: Adam's normalised step turns ulp-level gradient differences of
    near-zero entries into differences far below its learning rate (seen: 1.3e-5 on values ~0.1)."""
    import torch

    return bool(torch.allclose(a, b, rtol=1e-4, atol=5e-5))


@pytest.mark.parametrize("resume_on", [["train.fsdp=true"], []], ids=["two_sharded", "one"])
def test_a_sharded_checkpoint_is_whole_and_resumes_sharded_or_on_one_process(tmp_path, single, resume_on):
    import torch

    launch(tmp_path / "run", "train.steps=2", "train.fsdp=true")
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_000002" / "training_state.pt", weights_only=True)
    moments = [v for s in state["optimizers"]["student"]["state"].values() for v in s.values() if v.ndim > 0]
    assert moments and all(type(v) is torch.Tensor for v in moments)  # gathered, not DTensor shards
    (tmp_path / "run" / "DONE").unlink()
    launch(tmp_path / "run", "train.steps=4", "resume=true", "resume_allow=[train.steps]", *resume_on,
           processes=2 if resume_on else 1)
    resumed = metrics(tmp_path / "run")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in KEYS:
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in metrics(single)], rel=1e-4, abs=1e-6), key


def test_fsdp_refuses_what_it_cannot_shard(tmp_path):
    from turbo.config import ConfigError

    with pytest.raises(ConfigError, match="train.fsdp=true.*objective=diffusion"):
        run_training(cfg_for(*COMMON[1:], "train.steps=1", "train.fsdp=true", "objective=diffusion", "reward=none"),
                     tmp_path)
