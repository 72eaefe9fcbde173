"""Every config in conf/ composes and instantiates; the CLI runs and sweeps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import conf
from turbo.config import ConfigError, build, missing_keys
from tests.conftest import tiny_reward_overrides

CONF = Path(conf.__file__).parent
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
          for g in ("model", "objective", "reward", "data", "experiment", "launcher")}


def _compose(overrides, hydra=False):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


def _fill_missing(cfg, fakes, name=None):
    """Point every mandatory ('???') value at its local stand-in (``key@name``: the one for config
    ``name``, e.g. the tiny SDXL folder for model=sdxl's model.path)."""
    out = []
    for key in missing_keys(cfg, ""):
        value = fakes.get(f"{key}@{name}", fakes.get(key))
        if value is None:
            raise AssertionError(f"no stand-in for mandatory key {key}")
        out.append(f"{key}={value}")
    return out


@pytest.mark.parametrize("group,name", [(g, n) for g, names in GROUPS.items() for n in names])
def test_every_config_composes_and_instantiates(group, name, fake_checkpoints):
    if group == "launcher" and name in ("slurm", "submitit_local"):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose([f"{group}={name}"])
    overrides = _fill_missing(cfg, fake_checkpoints, name)
    if group == "reward":
        overrides += tiny_reward_overrides(cfg)
    cfg = _compose([f"{group}={name}", *overrides], hydra=group == "launcher")
    if group == "launcher":
        expected = {"submitit_local": "local"}.get(name, name)
        assert cfg.hydra.launcher._target_.split(".")[-1].lower().startswith(expected)
        return
    if group in ("model", "experiment"):
        m = cfg.model
        for part in ("backbone", "vae", "text_encoder", "schedule"):
            assert build(m[part], f"model.{part}") is not None
    if group == "objective":
        from turbo.denoiser import Denoiser
        d = Denoiser(build(cfg.model.backbone, "b"), build(cfg.model.schedule, "s"), cfg.model.family)
        d.add_adapter("student", 4, 4, list(cfg.model.lora_targets))
        assert build(cfg.objective, "objective", denoiser=d).name == name.removeprefix("toy_")  # toy_*: tunings of cd, dmd2, w2s
    if group == "reward":
        assert build(cfg.reward, "reward") is not None
    if group == "data":
        ds = build(cfg.data, "data")
        item = ds[0]
        if getattr(ds, "cached", False):  # latents C,F,h,w of the model's VAE
            assert item["latents"].shape[1] == cfg.video.num_frames and item["text"]["embeds"].ndim == 2
        elif ds.has_videos:
            assert item["video"].shape[0] == cfg.video.num_frames
        else:
            assert isinstance(item["prompt"], str) and "video" not in item


def test_targets_outside_the_project_are_refused():
    cfg = OmegaConf.create({"_target_": "os.system", "command": "true"})
    with pytest.raises(ConfigError, match="not an allowed target"):
        build(cfg, "model.backbone")


@pytest.mark.parametrize("node,where", [
    ({"_target_": "turbo.schedule.FlowSchedule", "shift": {"_target_": "os.system", "command": "touch x"}}, "shift"),
    ({"_target_": "turbo.schedule.FlowSchedule", "_args_": [{"_target_": "os.system", "command": "touch x"}]},
     "_args_[0]"),
    ({"_target_": "rewards.mixture.build_mixture", "a": {"model": [1, {"_target_": "builtins.exec", "x": 1}]}},
     "a.model[1]"),
    # inside the project but not a constructor: writes any file it is given
    ({"_target_": "turbo.atomic.atomic_write_text", "path": "/tmp/x", "text": "y"}, ""),
    ({"_target_": "rewards.loading.read_state_dict", "path": "/tmp/x.pt", "key": "k", "who": "w"}, ""),
])
def test_nested_and_non_constructor_targets_are_refused_before_anything_is_built(tmp_path, node, where):
    with pytest.raises(ConfigError, match=rf"reward{'.' if where else ''}{where.replace('[', '.').replace(']', '.')}"
                       r"?.*not an allowed target"):
        build(OmegaConf.create(node), "reward")


def test_every_shipped_target_is_allowed_and_no_allowed_target_writes_or_unpickles():
    import importlib.util
    import inspect

    from hydra._internal.utils import _locate

    from turbo.config import ALLOWED_TARGETS
    shipped = {line.split(":", 1)[1].split("#")[0].strip() for p in CONF.rglob("*.yaml") for line in p.read_text().splitlines()
               if line.strip().startswith("_target_:") and not line.strip().startswith("_target_: hydra")}
    assert shipped <= ALLOWED_TARGETS
    for name in ALLOWED_TARGETS:
        if name.startswith("bitsandbytes.") and importlib.util.find_spec("bitsandbytes") is None:
            continue  # the optional 8-bit optimizer (objective.optim.<group>.optimizer._target_)
        target = _locate(name)
        params = inspect.signature(target).parameters
        # nothing that names an output file, and pickle loading is off unless the config says so
        assert not {"out", "output", "path_out", "save_to"} & set(params), name
        if "allow_pickle" in params:
            assert params["allow_pickle"].default is False, name


def _cli(args, cwd):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    exe = Path(sys.executable).parent / "turbo-train"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_sweep_runs_two_jobs(tmp_path):
    r = _cli(["-m", "experiment=smoke", "objective.loss=huber,l2", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = sorted((tmp_path / "sweep").glob("*/DONE"))
    assert len(done) == 2
    losses = sorted((tmp_path / "sweep").glob("*/config.yaml"))
    assert {OmegaConf.load(p).objective.loss for p in losses} == {"huber", "l2"}


@pytest.mark.slow
def test_cli_sweep_over_objectives(tmp_path):
    r = _cli(["-m", "experiment=smoke", "objective=cd,dmd2,w2s", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    configs = sorted((tmp_path / "sweep").glob("*/config.yaml"))
    assert sorted(OmegaConf.load(p).objective._target_.rsplit(".", 1)[-1] for p in configs) == ["ConsistencyDistillation", "DMD2", "W2S"]
    assert len(list((tmp_path / "sweep").glob("*/DONE"))) == 3


@pytest.mark.slow
def test_cli_unknown_key_is_one_clear_error(tmp_path):
    r = _cli(["experiment=smoke", "train.stepz=3", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode != 0
    assert "stepz" in r.stderr and "Traceback" not in r.stderr
