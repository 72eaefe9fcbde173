"""The student folder's exports round-trip through the loaders people use outside turbo."""

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file

from turbo.denoiser import Denoiser
from turbo.export import (ORIGINAL_KEYS_FILE, hunyuan_original_name, lora_layers, original_key_lora, save_merged,
                          save_original_keys, wan_original_name)
from turbo.models import tiny_text_encoder, tiny_wan
from turbo.schedule import FlowSchedule

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def with_random_student(d: Denoiser, targets, guidance_embedding: bool = False) -> Denoiser:
    """``d`` with a random (non-zero) rank-4, alpha-8 "student" (scale 2, not 1)."""
    d.add_adapter("student", rank=4, alpha=8, target_modules=targets, guidance_embedding=guidance_embedding)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in d.adapter_parameters("student"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return d


def student(guidance_embedding: bool = False) -> Denoiser:
    """The tiny Wan with a random student."""
    d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan", "condition_embedder.time_embedder").eval()
    return with_random_student(d, TARGETS, guidance_embedding)


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    return x, torch.tensor([700, 300]), tiny_text_encoder(seed=0)(["a red circle", "a blue square"])


def test_original_names_follow_wan_releases():
    assert wan_original_name("blocks.3.attn1.to_q") == ("blocks.3.self_attn.q", ("blocks.3.attn1.to_q",))
    assert wan_original_name("blocks.0.attn2.to_out.0")[0] == "blocks.0.cross_attn.o"
    assert wan_original_name("blocks.1.ffn.net.0.proj")[0] == "blocks.1.ffn.0"
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


def hunyuan_student(targets, num_single_layers: int = 1) -> Denoiser:
    from turbo.models import tiny_hunyuan

    d = Denoiser(tiny_hunyuan(seed=0, num_single_layers=num_single_layers), FlowSchedule(shift=7.0), "hunyuan",
                 "time_text_embed.timestep_embedder").eval()
    return with_random_student(d, targets)


def test_hunyuan_names_fuse_q_k_v_as_the_release_does():
    assert hunyuan_original_name("transformer_blocks.0.attn.to_k") == (
        "double_blocks.0.img_attn_qkv", tuple(f"transformer_blocks.0.attn.to_{c}" for c in "qkv"))
    assert hunyuan_original_name("transformer_blocks.2.attn.add_v_proj")[0] == "double_blocks.2.txt_attn_qkv"
    assert hunyuan_original_name("single_transformer_blocks.1.proj_mlp") == (
        "single_blocks.1.linear1", tuple(f"single_transformer_blocks.1.{m}" for m in
                                         ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")))
    assert hunyuan_original_name("context_embedder.token_refiner.refiner_blocks.0.attn.to_out.0")[0] == (
        "txt_in.individual_token_refiner.blocks.0.self_attn_proj")
    with pytest.raises(ValueError, match="'proj_out' has no name in HunyuanVideo's original checkpoints"):
        hunyuan_original_name("proj_out")


def test_hunyuan_original_key_lora_loads_through_diffusers_converter_and_samples_as_the_student(tmp_path):
    from diffusers import HunyuanVideoPipeline

    from turbo.models import tiny_hunyuan, tiny_hunyuan_text_encoder

    # the dual-stream blocks only: diffusers' reader hard-codes the 3072 width of a single block's
    # linear1 and splits the refiner's A too; those are checked against the deltas below
    targets = [f"transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                           "add_k_proj", "add_v_proj", "to_add_out")]
    d = hunyuan_student(targets, num_single_layers=0)
    path = save_original_keys(d, "student", tmp_path)
    state = load_file(path)
    assert state["diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight"].shape == (12, 32)  # 3 x rank 4
    assert state["diffusion_model.double_blocks.0.img_attn_qkv.lora_B.weight"].shape == (96, 12)
    converted = HunyuanVideoPipeline.lora_state_dict(str(path))
    fresh = tiny_hunyuan(seed=0, num_single_layers=0)
    fresh.load_lora_adapter(converted, prefix="transformer", adapter_name="imported")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 1, 4, 4, generator=g), torch.tensor([700, 300])
    cond = tiny_hunyuan_text_encoder(seed=0)(["a red circle", "a blue square"])
    want = d(x, t, cond, role="student").out
    got = Denoiser(fresh, FlowSchedule(shift=7.0), "hunyuan").raw(x, t, cond)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (want - d(x, t, cond, role="teacher").out).abs().max() > 1e-3


def test_hunyuan_fused_loras_equal_their_members_deltas_stacked():
    d = hunyuan_student(["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out"])
    state, layers = original_key_lora(d, "student"), lora_layers(d, "student")
    assert any(n.startswith("context_embedder.token_refiner") for n in layers)  # the refiner is covered
    for name in layers:
        original, members = hunyuan_original_name(name)
        key = f"diffusion_model.{original}"
        fused = state[f"{key}.lora_B.weight"] @ state[f"{key}.lora_A.weight"]
        modules = dict(d.backbone.named_modules())
        want = torch.cat([layers[m].get_delta_weight("student") if m in layers
                          else torch.zeros(modules[m].out_features, modules[m].in_features) for m in members])
        torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-6)
    # a single block's linear1 holds q, k, v and the (untrained) MLP input, in that order
    assert state["diffusion_model.single_blocks.0.linear1.lora_B.weight"].shape == (32 * 3 + 64, 12)


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
