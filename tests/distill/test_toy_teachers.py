"""The shipped toy teachers: their files pass their checksums, their recipes still reproduce the
recorded start of training, and they draw what the prompt says better than chance."""

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from distill.train import run_training
from turbo.toy.assets import asset, manifest

TEACHERS = [name for name in ("t2i", "t2i_w128", "t2i_w128_15k", "t2v", "i2v", "i2v_w128") if name in manifest()]


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


def test_ship_copies_a_finished_run_and_can_store_its_backbone_in_half_precision(tmp_path):
    """``turbo.toy.assets ship``: the exported backbone, text encoder, tokenizer and recipe of a
    finished teacher run; with ``storage_dtype="float16"`` the backbone's file holds float16 tensors
    (about half the bytes) that load back into a float32 model equal to the trained weights rounded once."""
    from safetensors import safe_open

    from turbo.models.load import load_backbone
    from turbo.toy.assets import ship

    run = tmp_path / "run"
    run_training(cfg_for("experiment=toy_teacher_t2i", "train.steps=2", "train.checkpoint_every=2",
                         "samples.teacher_steps=1", "samples.prompts=[a red circle moving left]", "~eval"), run)
    weights = tmp_path / "weights"
    full = ship(run, "full", "the command", root=weights)
    half = ship(run, "half", "the command", root=weights, storage_dtype="float16")
    assert full["recipe"]["command"] == "the command" and full["recipe"]["steps"] == 2
    assert "storage_dtype" not in full["recipe"] and half["recipe"]["storage_dtype"] == "float16"
    assert set(full["files"]) == set(half["files"]) >= {"transformer/config.json", "text_encoder/model.safetensors"}

    rel = "transformer/diffusion_pytorch_model.safetensors"
    for name, dtype in (("full", torch.float32), ("half", torch.float16)):
        with safe_open(str(weights / name / rel), framework="pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
    assert (weights / "half" / rel).stat().st_size < 0.6 * (weights / "full" / rel).stat().st_size

    trained, shipped = (load_backbone(str(weights / n), "wan") for n in ("full", "half"))
    assert {p.dtype for p in shipped.parameters()} == {torch.float32}
    for a, b in zip(trained.parameters(), shipped.parameters()):
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)
    assert any((a != b).any() for a, b in zip(trained.parameters(), shipped.parameters()))  # it was rounded

    with pytest.raises(ValueError, match="storage_dtype='bfloat8'"):
        ship(run, "bad", "the command", root=weights, storage_dtype="bfloat8")


def test_a_teacher_shipped_in_float16_loads_as_float32():
    from turbo.toy.models import shipped_backbone

    half = [name for name, entry in manifest().items() if entry["recipe"].get("storage_dtype") == "float16"]
    assert "i2v_w128" in half
    for name in half:
        assert {p.dtype for p in shipped_backbone(name).parameters()} == {torch.float32}
