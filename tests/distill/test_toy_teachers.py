"""The shipped toy teachers: their files pass their checksums, their recipes still reproduce the
recorded start of training, and they draw what the prompt says better than chance."""

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from distill.train import run_training
from turbo.toy.assets import asset, manifest

TEACHERS = [name for name in ("t2i", "t2i_w128", "t2i_w128_15k", "t2v", "i2v") if name in manifest()]


def cfg_for(*overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_shipped_file_passes_its_checksum_and_the_budget():
    entries = manifest()
    assert {"t2i", "t2v"} <= set(entries)
    total = 0
    for name, entry in entries.items():
        folder = asset(name)
        total += sum((folder / rel).stat().st_size for rel in entry["files"])
        recipe = entry["recipe"]
        assert {"command", "seed", "steps", "final_loss", "date"} <= set(recipe), name
    assert total <= 20 * 2**20


@pytest.mark.parametrize("name", TEACHERS)
def test_recipe_reproduces_its_first_recorded_losses(tmp_path, name):
    """Three steps of the recorded recipe give the losses the shipped run started with (same seed,
    same data order; the tolerance covers thread-count-dependent float summation order)."""
    recipe = manifest()[name]["recipe"]
    cfg = cfg_for(f"experiment=toy_teacher_{name}", "train.steps=3", "train.checkpoint_every=3",
                  "samples.teacher_steps=1", "samples.prompts=[a red circle moving left]")
    run_training(cfg, tmp_path)
    losses = [json.loads(line)["diffusion"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(recipe["first_losses"][:3], rel=2e-3)


def test_a_sample_prompt_outside_the_toy_grammar_stops_the_run_before_training(tmp_path):
    from turbo.toy.world import CaptionError

    cfg = cfg_for("train.steps=2", "samples.prompts=[a purple circle moving left]", "~eval")
    with pytest.raises(CaptionError, match="expected a colour.*found 'purple'"):
        run_training(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
