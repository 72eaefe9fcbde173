"""The Denoiser: roles on one shared base, CFG, the guidance embedding, LoRA save/load."""

import pytest
import torch

from turbo.denoiser import Denoiser, guidance_features
from turbo.models import tiny_text_encoder, tiny_unet3d, tiny_wan
from turbo.schedule import FlowSchedule, VPSchedule

WAN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _wan(guidance=False):
    d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan", "condition_embedder.time_embedder")
    d.add_adapter("student", rank=4, alpha=4, target_modules=WAN_TARGETS, guidance_embedding=guidance)
    d.add_adapter("critic", rank=4, alpha=4, target_modules=WAN_TARGETS)
    return d


def _inputs(b=2, shape=(16, 3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = tiny_text_encoder(seed=0)
    return torch.randn(b, *shape, generator=g), torch.tensor([100, 900][:b]), enc(["a red circle", "a blue square"][:b]), enc([""] * b)


def _perturb(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_zero_init_student_equals_teacher_and_base_is_shared():
    d = _wan()
    x, t, cond, _ = _inputs()
    teacher = d(x, t, cond, role="teacher").out
    assert torch.equal(d(x, t, cond, role="student").out, teacher)
    # one copy of the base weights: every role reads the same storage, only LoRA tensors are extra
    base = {n: p for n, p in d.backbone.named_parameters() if "lora_" not in n}
    assert all(not p.requires_grad for p in base.values())
    lora = [p for n, p in d.backbone.named_parameters() if "lora_" in n]
    assert sum(p.numel() for p in lora) < 0.5 * sum(p.numel() for p in base.values())
    # one copy: the base parameters of a denoiser with two roles are exactly those of a bare model
    assert sum(p.numel() for p in base.values()) == sum(p.numel() for p in tiny_wan(seed=0).parameters())
    ptrs = {p.data_ptr() for p in base.values()}
    for role in ("teacher", "student", "critic", {"critic": 0.5}):
        d(x, t, cond, role=role)
    assert {p.data_ptr() for n, p in d.backbone.named_parameters() if "lora_" not in n} == ptrs


def test_roles_differ_once_trained_and_teacher_stays_fixed():
    d = _wan()
    x, t, cond, _ = _inputs()
    teacher = d(x, t, cond).out
    _perturb(d.adapter_parameters("student"))
    student = d(x, t, cond, role="student").out
    assert not torch.allclose(student, teacher)
    assert torch.equal(d(x, t, cond, role="critic").out, teacher)  # critic still zero
    assert torch.equal(d(x, t, cond, role="teacher").out, teacher)


def test_weighted_role_scales_the_adapter_delta():
    """LoRA is additive per layer, so a half-weight adapter moves a single linear layer by half
    the delta; for the whole network we check the endpoints and that 0.5 lies strictly between."""
    d = _wan()
    x, t, cond, _ = _inputs()
    _perturb(d.adapter_parameters("critic"))
    full = d(x, t, cond, role="critic").out
    zero = d(x, t, cond, role={"critic": 0.0}).out
    half = d(x, t, cond, role={"critic": 0.5}).out
    torch.testing.assert_close(zero, d(x, t, cond).out)
    assert 0 < (half - zero).norm() < (full - zero).norm()
    # a single LoRA layer is exactly linear in the weight
    layer = d.backbone.blocks[0].attn1.to_q
    inp = torch.randn(3, layer.in_features)
    with d.role("teacher"):
        y0 = layer(inp)
    with d.role({"critic": 0.25}):
        yq = layer(inp)
    with d.role("critic"):
        y1 = layer(inp)
    torch.testing.assert_close(yq - y0, 0.25 * (y1 - y0), rtol=1e-5, atol=1e-6)


def test_role_switch_keeps_requires_grad():
    d = _wan()
    crit = d.adapter_parameters("critic")
    for p in crit:
        p.requires_grad_(False)
    x, t, cond, _ = _inputs()
    d(x, t, cond, role="critic")
    d(x, t, cond, role="student")
    assert not any(p.requires_grad for p in crit)
    assert all(p.requires_grad for p in d.adapter_parameters("student"))


def test_cfg_is_imagen_form_and_equals_separate_passes():
    d = _wan()
    x, t, cond, uncond = _inputs()
    c, u = d(x, t, cond), d(x, t, uncond)
    g = d.cfg(x, t, cond, uncond, scale=4.0)
    torch.testing.assert_close(g.out, u.out + 4.0 * (c.out - u.out), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g.x0, u.x0 + 4.0 * (c.x0 - u.x0), rtol=1e-4, atol=1e-4)
    # per-sample scales
    g2 = d.cfg(x, t, cond, uncond, scale=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(g2.out[0], c.out[0], rtol=1e-4, atol=1e-5)


def test_guidance_embedding_starts_at_zero_and_conditions_on_w():
    d = _wan(guidance=True)
    x, t, cond, _ = _inputs()
    w = torch.tensor([5.0, 12.0])
    teacher = d(x, t, cond).out
    assert torch.equal(d(x, t, cond, role="student", guidance=w).out, teacher)
    _perturb(d.guidance_embeddings["student"].parameters())
    a = d(x, t, cond, role="student", guidance=w).out
    b = d(x, t, cond, role="student", guidance=w + 1).out
    assert not torch.allclose(a, b)
    assert torch.equal(d(x, t, cond, role="critic", guidance=w).out, teacher)  # only the student has it
    f = guidance_features(torch.tensor([0.0]))
    assert f.shape == (1, 256) and torch.equal(f[0, :128], torch.zeros(128)) and torch.equal(f[0, 128:], torch.ones(128))
    # LCM's get_guidance_scale_embedding written out: w * 1000 times 10000^(-i / 127), [sin | cos]
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(128) / 127)
    args = 7500.0 * freqs
    torch.testing.assert_close(guidance_features(torch.tensor([7.5]))[0], torch.cat([args.sin(), args.cos()]))


def test_the_w_embedding_enters_before_the_time_mlp_so_its_effect_depends_on_t():
    """T2V-Turbo adds the w embedding to the timestep's sinusoidal features (diffusers'
    TimestepEmbedding(cond_proj_dim=256)); added after the MLP, its shift would be the same at every t."""
    d = _wan(guidance=True)
    embedder = d.backbone.condition_embedder.time_embedder
    g = d.guidance_embeddings["student"]
    assert g.linear.weight.shape == (embedder.linear_1.in_features, 256)  # the MLP's input width
    _perturb(g.parameters())
    seen = {}
    embedder.register_forward_hook(lambda m, a, out: seen.setdefault(len(seen), out.detach().clone()))
    x, _, cond, _ = _inputs(b=1)
    w = torch.tensor([4.0])
    for t in (100, 900):
        d(x, torch.tensor([t]), cond, role="teacher")
        d(x, torch.tensor([t]), cond, role="student", guidance=w)
    shift_100, shift_900 = seen[1] - seen[0], seen[3] - seen[2]
    assert shift_100.abs().max() > 1e-4 and not torch.allclose(shift_100, shift_900, atol=1e-6)


def test_unet3d_w_embedding_is_diffusers_time_cond_proj():
    """Our student's w embedding on a UNet3D computes what diffusers' own
    UNet3DConditionModel(time_cond_proj_dim=256) computes with the same cond_proj weight, and a
    T2V-Turbo (MS) state dict key ``time_embedding.cond_proj.weight`` loads into it."""
    from diffusers import UNet3DConditionModel

    from turbo.lora import load_guidance_state

    d = Denoiser(tiny_unet3d(seed=0), VPSchedule(), "unet3d", "time_embedding")
    d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v", "to_out.0"], guidance_embedding=True)
    native = UNet3DConditionModel.from_config(d.backbone.config, time_cond_proj_dim=256)
    missing = native.load_state_dict({k.replace(".base_layer", ""): v for k, v in d.backbone.state_dict().items()
                                      if "lora_" not in k}, strict=False).missing_keys
    assert missing == ["time_embedding.cond_proj.weight"]
    cond_proj = torch.randn(native.time_embedding.cond_proj.weight.shape, generator=torch.Generator().manual_seed(3))
    load_guidance_state(d.guidance_embeddings["student"], {"time_embedding.cond_proj.weight": cond_proj}, "t2v_turbo.pt")
    with torch.no_grad():
        native.time_embedding.cond_proj.weight.copy_(cond_proj)
    x, t, cond, _ = _inputs(shape=(4, 2, 8, 8))
    w = torch.tensor([3.0, 7.0])
    ours = d(x, t, cond, role="student", guidance=w).out
    theirs = native(sample=x, timestep=t, encoder_hidden_states=cond.embeds, timestep_cond=guidance_features(w),
                    return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, d(x, t, cond).out, atol=1e-4)  # the embedding does something


def test_unet3d_family_with_vp_schedule():
    d = Denoiser(tiny_unet3d(seed=0), VPSchedule(), "unet3d", "time_embedding")
    d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v", "to_out.0"], guidance_embedding=True)
    x, t, cond, _ = _inputs(shape=(4, 2, 8, 8))
    torch.testing.assert_close(d(x, t, cond, role="student", guidance=torch.ones(2)).out, d(x, t, cond).out)
    # eps-prediction: x0 and eps reconstruct x_t
    p = d(x, t, cond)
    a, s = d.schedule.alpha_sigma(t, x)
    torch.testing.assert_close(a * p.x0 + s * p.eps, x, rtol=1e-4, atol=1e-4)


def test_saved_lora_loads_into_a_fresh_diffusers_model(tmp_path):
    d = _wan()
    _perturb(d.adapter_parameters("student"))
    x, t, cond, _ = _inputs()
    ours = d(x, t, cond, role="student").out
    from turbo.lora import save_lora
    save_lora(d, "student", tmp_path / "student")
    fresh = tiny_wan(seed=0)
    fresh.load_lora_adapter(str(tmp_path / "student" / "pytorch_lora_weights.safetensors"),
                            prefix="transformer", adapter_name="student")
    theirs = fresh(hidden_states=x, timestep=d.schedule.model_timestep(t), encoder_hidden_states=cond.embeds,
                   return_dict=False)[0]
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_problem():
    d = _wan()
    with pytest.raises(KeyError, match="unknown adapters"):
        d(*_inputs()[:3], role="nope")
    with pytest.raises(ValueError, match="model.family"):
        Denoiser(tiny_wan(), FlowSchedule(), "flux")
    with pytest.raises(ValueError, match="target_modules"):
        d.add_adapter("x", 4, 4, ["no_such_layer"])


def test_a_bf16_base_takes_float32_latents_and_gives_float32_back():
    import copy

    d32 = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan").eval()
    d16 = copy.deepcopy(d32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    cond = tiny_text_encoder(seed=0)(["a red circle", "a blue square"])  # float32 text, as encoders give
    with torch.no_grad():
        want, got = d32(x, 500, cond), d16(x, 500, cond)
    assert got.out.dtype == got.x0.dtype == torch.float32  # the schedule's conversions stay in float32
    assert (got.out - want.out).abs().max() <= 0.05 * want.out.abs().max()  # bf16 rounding, not another function


def _student_grads(checkpointing: bool):
    d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan", "condition_embedder.time_embedder")
    d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v", "to_out.0"], guidance_embedding=True)
    with torch.no_grad():
        for p in d.adapter_parameters("student"):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    if checkpointing:
        d.enable_gradient_checkpointing()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    cond = tiny_text_encoder(seed=0)(["a red circle", "a blue square"])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        student = d(x, 500, cond, role="student", guidance=torch.full((2,), 3.0)).out
    teacher = d(x, 500, cond, role="teacher").out.detach()  # the role changes before backward recomputes
    (student - teacher).square().mean().backward()
    return [p.grad.clone() for p in d.adapter_parameters("student")], sum(saved)


def test_gradient_checkpointing_recomputes_with_the_forwards_adapter_and_keeps_less():
    plain, kept = _student_grads(False)
    checkpointed, kept_checkpointed = _student_grads(True)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, checkpointed))
    assert any(a.abs().max() > 0 for a in plain)
    assert kept_checkpointed < 0.8 * kept
