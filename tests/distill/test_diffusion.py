"""objective=diffusion: the plain denoising loss pre-trains teachers with the same loop."""

import json

import pytest
import torch

from distill.objectives.base import Batch
from distill.objectives.diffusion import Diffusion, clean_state_dict, drop_prompts
from distill.train import run_training
from tests.distill.test_train import cfg_for, metrics
from turbo.denoiser import Denoiser
from turbo.models import load_backbone, tiny_text_encoder, tiny_wan
from turbo.schedule import FlowSchedule


def _setup(train="base", dropout=0.0):
    torch.manual_seed(0)
    d = Denoiser(tiny_wan(seed=0), FlowSchedule(), "wan")
    d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v", "to_out.0"])
    enc = tiny_text_encoder(seed=0)
    prompts = ["a red circle moving left", "a blue square moving up"]
    shape = (16, 3, 4, 4)
    batch = Batch(prompts, enc(prompts), enc(["", ""]), shape, torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)))
    return Diffusion(d, train=train, cond_dropout=dropout), batch


def test_loss_is_the_velocity_regression_written_out():
    obj, batch = _setup()
    loss = obj.generator_loss(batch, 0, torch.Generator().manual_seed(4)).terms["diffusion"]
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, 1000, (2,), generator=g)
    eps = torch.randn(batch.latents.shape, generator=g)
    s = obj.denoiser.schedule.sigmas[t].float().view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * batch.latents + s * eps
    out = obj.denoiser(x_t, t, batch.cond).out
    assert loss.item() == pytest.approx(((out - (eps - batch.latents)) ** 2).mean().item(), rel=1e-5)


def test_prompt_dropout_swaps_in_the_empty_prompt():
    _, batch = _setup()
    all_dropped = drop_prompts(batch.cond, batch.uncond, 0.999, torch.Generator().manual_seed(0))
    assert torch.equal(all_dropped.embeds, batch.uncond.embeds) and torch.equal(all_dropped.mask, batch.uncond.mask)
    assert drop_prompts(batch.cond, batch.uncond, 0.0, torch.Generator()) is batch.cond
    drops = [bool((drop_prompts(batch.cond, batch.uncond, 0.3, torch.Generator().manual_seed(i)).embeds[0]
                   == batch.uncond.embeds[0]).all()) for i in range(400)]
    assert 0.2 < sum(drops) / len(drops) < 0.4


@pytest.mark.parametrize("train", ["base", "student"])
def test_trains_exactly_its_group(train):
    obj, batch = _setup(train)
    group = "model" if train == "base" else "student"
    assert list(obj.trainable()) == [group]
    obj.generator_loss(batch, 0, torch.Generator().manual_seed(0)).total().backward()
    lora = [p for n, p in obj.denoiser.backbone.named_parameters() if "lora_" in n]
    base = [p for n, p in obj.denoiser.backbone.named_parameters() if "lora_" not in n]
    trained, frozen = (base, lora) if train == "base" else (lora, base)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert all(p.grad is None for p in frozen)


def test_pretrained_teacher_is_exported_and_loads_back(tmp_path, monkeypatch):
    from turbo.pipeline import Stage

    sampled, latents = [], Stage.latents
    monkeypatch.setattr(Stage, "latents", lambda self, *a, **k: (sampled.append(self.sampler.num_steps),
                                                                   latents(self, *a, **k))[1])
    run_training(cfg_for("objective=diffusion", "train.steps=4", "reward=none"), tmp_path)
    rows = metrics(tmp_path)
    assert all("diffusion" in r and "model/grad_norm" in r for r in rows)
    assert not (tmp_path / "student").exists()  # nothing LoRA was trained
    loaded = load_backbone(str(tmp_path / "teacher"), "wan")
    assert not torch.equal(loaded.state_dict()["blocks.0.attn1.to_q.weight"],
                           tiny_wan(seed=0).state_dict()["blocks.0.attn1.to_q.weight"])  # it did train
    cfg = json.loads((tmp_path / "teacher" / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "WanTransformer3DModel"
    # no student: the samples and timings are the many-step teacher's alone
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "samples").glob("*.mp4")) == ["teacher"]
    timing = json.loads((tmp_path / "DONE").read_text())["sec_per_video"]
    assert "student" not in timing and "speedup" not in timing and timing["teacher"] > 0
    # every stage is timed once (the benchmark reuses it); "teacher" is the many-step one, not the last
    assert sorted(set(sampled)) == [2, 4]
    many = next(label for label in timing["stages"] if label.startswith("teacher, 4 steps"))
    assert timing["stages"][many] == timing["teacher"] + timing["decode"]


def test_clean_state_dict_matches_a_plain_model():
    obj, _ = _setup()
    assert set(clean_state_dict(obj.denoiser.backbone)) == set(tiny_wan(seed=0).state_dict())
