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
from turbo.models import tiny_text_encoder, tiny_wan, tiny_wan_vae

CONF = Path(conf.__file__).parent
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
          for g in ("model", "objective", "reward", "data", "experiment", "launcher")}


@pytest.fixture(scope="module")
def fake_checkpoints(tmp_path_factory):
    """Local stand-ins for what real configs point at: a diffusers-format Wan folder built from the
    tiny models, an open_clip checkpoint file, a video folder."""
    root = tmp_path_factory.mktemp("ckpts")
    wan = root / "wan"
    tiny_wan().save_pretrained(wan / "transformer")
    tiny_wan_vae().vae.save_pretrained(wan / "vae")
    enc = tiny_text_encoder()
    enc.model.save_pretrained(wan / "text_encoder")
    enc.tokenizer.save_pretrained(wan / "tokenizer")
    # a tiny open_clip architecture registered under a name, so the real loading path runs
    import open_clip
    (root / "arch").mkdir()
    (root / "arch" / "TurboTest-CLIP.json").write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(root / "arch")
    clip = root / "clip.pt"
    torch.save(open_clip.create_model("TurboTest-CLIP").state_dict(), clip)
    videos = root / "videos"
    videos.mkdir()
    from turbo.video import write_video
    write_video(videos / "a.mp4", torch.rand(17, 3, 64, 64))
    (videos / "metadata.jsonl").write_text(json.dumps({"video": "a.mp4", "caption": "a red circle moving left"}) + "\n")
    # reward stand-ins: HPSv2 and the aesthetic CLIP reuse the tiny open_clip file; a Linear head; a PickScore folder
    torch.save(torch.nn.Linear(32, 1).state_dict(), root / "aesthetic_head.pt")
    from transformers import CLIPImageProcessor
    from rewards.pickscore import tiny_pickscore_reward
    pick = tiny_pickscore_reward()
    pick.model.clip.save_pretrained(root / "pickscore")
    pick.hf_tokenizer.save_pretrained(root / "pickscore")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "pickscore")
    # video rewards: the tiny models saved under ['model'] like the official files, a tiny BERT vocab
    from rewards.internvideo2 import TINY_VOCAB, tiny_internvideo2_model
    from rewards.viclip import tiny_viclip_model
    torch.save({"model": tiny_viclip_model().state_dict()}, root / "viclip.pth")
    torch.save({"model": tiny_internvideo2_model().state_dict()}, root / "internvideo2.pth")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(TINY_VOCAB))
    return {"model.path": str(wan), "reward.clip.model.checkpoint": str(clip), "data.root": str(videos),
            "reward.hpsv2.model.checkpoint": str(clip), "reward.aesthetic.model.clip_checkpoint": str(clip),
            "reward.aesthetic.model.head_checkpoint": str(root / "aesthetic_head.pt"),
            "reward.pickscore.model.path": str(root / "pickscore"),
            "reward.viclip.model.checkpoint": str(root / "viclip.pth"),
            "reward.internvideo2.model.checkpoint": str(root / "internvideo2.pth"),
            "reward.internvideo2.model.tokenizer_path": str(root / "bert")}


def _compose(overrides, hydra=False):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


def _fill_missing(cfg, fakes):
    """Point every mandatory ('???') value at its local stand-in."""
    out = []
    for key in missing_keys(cfg, ""):
        if key not in fakes:
            raise AssertionError(f"no stand-in for mandatory key {key}")
        out.append(f"{key}={fakes[key]}")
    return out


@pytest.mark.parametrize("group,name", [(g, n) for g, names in GROUPS.items() for n in names])
def test_every_config_composes_and_instantiates(group, name, fake_checkpoints):
    if group == "launcher" and name == "slurm":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose([f"{group}={name}"])
    overrides = _fill_missing(cfg, fake_checkpoints)
    if group == "reward":  # full-size towers are too big for a test: same code, tiny architectures
        for term in [k for k in cfg.reward if not k.startswith("_")]:
            model = cfg.reward[term].model
            if "arch" in model:
                overrides.append(f"reward.{term}.model.arch=TurboTest-CLIP")
            if "size" in model:
                overrides.append(f"reward.{term}.model.size=tiny")
    cfg = _compose([f"{group}={name}", *overrides], hydra=group == "launcher")
    if group == "launcher":
        assert cfg.hydra.launcher._target_.split(".")[-1].lower().startswith(name if name != "slurm" else "slurm")
        return
    if group in ("model", "experiment"):
        m = cfg.model
        for part in ("backbone", "vae", "text_encoder", "schedule"):
            assert build(m[part], f"model.{part}") is not None
    if group == "objective":
        from turbo.denoiser import Denoiser
        d = Denoiser(build(cfg.model.backbone, "b"), build(cfg.model.schedule, "s"), cfg.model.family)
        d.add_adapter("student", 4, 4, list(cfg.model.lora_targets))
        assert build(cfg.objective, "objective", denoiser=d).name == name
    if group == "reward":
        assert build(cfg.reward, "reward") is not None
    if group == "data":
        ds = build(cfg.data, "data")
        item = ds[0]
        if ds.has_videos:
            assert item["video"].shape[0] == cfg.video.num_frames
        else:
            assert isinstance(item["prompt"], str) and "video" not in item


def test_targets_outside_the_project_are_refused():
    cfg = OmegaConf.create({"_target_": "os.system", "command": "true"})
    with pytest.raises(ConfigError, match="only targets inside"):
        build(cfg, "model.backbone")


def _cli(args, cwd):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    exe = Path(sys.executable).parent / "turbo-train"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_sweep_runs_two_jobs(tmp_path):
    r = _cli(["-m", "experiment=smoke", "objective.loss=huber,l2", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = sorted((tmp_path / "sweep").glob("*/DONE"))
    assert len(done) == 2
    losses = sorted((tmp_path / "sweep").glob("*/config.yaml"))
    assert {OmegaConf.load(p).objective.loss for p in losses} == {"huber", "l2"}


def test_cli_sweep_over_objectives(tmp_path):
    r = _cli(["-m", "experiment=smoke", "objective=cd,dmd2,w2s", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    configs = sorted((tmp_path / "sweep").glob("*/config.yaml"))
    assert sorted(OmegaConf.load(p).objective._target_.rsplit(".", 1)[-1] for p in configs) == ["ConsistencyDistillation", "DMD2", "W2S"]
    assert len(list((tmp_path / "sweep").glob("*/DONE"))) == 3


def test_cli_unknown_key_is_one_clear_error(tmp_path):
    r = _cli(["experiment=smoke", "train.stepz=3", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode != 0
    assert "stepz" in r.stderr and "Traceback" not in r.stderr
