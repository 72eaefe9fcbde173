"""The student folder's exports round-trip through the loaders people use outside turbo."""

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file

from turbo.denoiser import Denoiser
from turbo.export import ORIGINAL_KEYS_FILE, original_key_lora, save_merged, save_original_keys, wan_original_name
from turbo.models import tiny_text_encoder, tiny_wan
from turbo.schedule import FlowSchedule

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def student(guidance_embedding: bool = False) -> Denoiser:
    """The tiny Wan with a random (non-zero) rank-4, alpha-8 "student" (scale 2, not 1)."""
    d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan", "condition_embedder.time_embedder").eval()
    d.add_adapter("student", rank=4, alpha=8, target_modules=TARGETS, guidance_embedding=guidance_embedding)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in d.adapter_parameters("student"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return d


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    return x, torch.tensor([700, 300]), tiny_text_encoder(seed=0)(["a red circle", "a blue square"])


def test_original_names_follow_wan_releases():
    assert wan_original_name("blocks.3.attn1.to_q") == "blocks.3.self_attn.q"
    assert wan_original_name("blocks.0.attn2.to_out.0") == "blocks.0.cross_attn.o"
    assert wan_original_name("blocks.1.ffn.net.0.proj") == "blocks.1.ffn.0"
    with pytest.raises(ValueError, match="'proj_out' has no name in Wan2.1's original checkpoints"):
        wan_original_name("proj_out")


def test_original_key_lora_loads_through_diffusers_converter_and_samples_as_the_student(tmp_path):
    d = student()
    path = save_original_keys(d, "student", tmp_path)
    state = load_file(path)
    assert path.name == ORIGINAL_KEYS_FILE and all(k.startswith("diffusion_model.blocks.") for k in state)
    assert state["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 8.0
    assert state["diffusion_model.blocks.0.ffn.2.lora_down.weight"].shape[0] == 4
    # diffusers' own reader of the original layout (the ComfyUI / Wan-release key names)
    converted = WanPipeline.lora_state_dict(str(path))
    converted = converted[0] if isinstance(converted, tuple) else converted
    fresh = tiny_wan(seed=0)
    fresh.load_lora_adapter(converted, prefix="transformer", adapter_name="imported")
    x, t, cond = inputs()
    want = d(x, t, cond, role="student").out
    got = Denoiser(fresh, FlowSchedule(shift=3.0), "wan").raw(x, t, cond)
    teacher = d(x, t, cond, role="teacher").out
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (want - teacher).abs().max() > 1e-3  # the LoRA matters, so the match means something


def test_merged_backbone_loads_with_from_pretrained_and_equals_the_student_at_its_w(tmp_path):
    d = student(guidance_embedding=True)
    folder = save_merged(d, "student", tmp_path / "merged", guidance=3.0)
    assert folder.name == "transformer" and (folder / "config.json").is_file()
    merged = WanTransformer3DModel.from_pretrained(str(folder)).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x, t, cond = inputs()
    w = torch.full((2,), 3.0)
    want = d(x, t, cond, role="student", guidance=w).out
    got = Denoiser(merged, FlowSchedule(shift=3.0), "wan").raw(x, t, cond)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    other_w = d(x, t, cond, role="student", guidance=torch.full((2,), 8.0)).out
    assert (other_w - want).abs().max() > 1e-4  # the folded w is the sampler's, not any w
    with pytest.raises(ValueError, match="needs the one w it samples at"):
        save_merged(d, "student", tmp_path / "again")


def test_original_keys_are_refused_for_a_family_without_a_key_map():
    from turbo.models import tiny_unet3d

    d = Denoiser(tiny_unet3d(seed=0), FlowSchedule(), "unet3d")
    d.add_adapter("student", 4, 4, ["to_q"])
    with pytest.raises(ValueError, match="export.original_keys: no original key map for model.family=unet3d"):
        original_key_lora(d, "student")


def test_a_run_writes_the_exports_it_is_asked_for(tmp_path):
    from hydra import compose, initialize_config_module

    from distill.train import run_training

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", "train.steps=1", "reward=none",
                                          "student.export.original_keys=true", "student.export.merged=true"])
    run_training(cfg, tmp_path)
    folder = tmp_path / "student"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["guidance_embedding.safetensors", "lora_original_keys.safetensors", "merged",
                     "pytorch_lora_weights.safetensors", "sampler.json"]
    assert (folder / "merged" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
