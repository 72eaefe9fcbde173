"""Consistency distillation against independent computations."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from distill.objectives.base import Batch
from distill.objectives.cd import ConsistencyDistillation
from turbo.denoiser import Denoiser
from turbo.models import tiny_text_encoder, tiny_unet3d, tiny_wan
from turbo.schedule import FlowSchedule, VPSchedule

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _denoiser(family):
    if family == "wan":
        d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan", "condition_embedder.time_embedder")
        shape = (16, 3, 4, 4)
    else:
        d = Denoiser(tiny_unet3d(seed=0), VPSchedule(), "unet3d", "time_embedding")
        shape = (4, 2, 8, 8)
    d.add_adapter("student", 4, 4, TARGETS, guidance_embedding=True)
    return d, shape


def _batch(shape, b=2, seed=0):
    enc = tiny_text_encoder(seed=0)
    prompts = ["a red circle moving left", "a green square moving up"][:b]
    x0 = torch.randn(b, *shape, generator=torch.Generator().manual_seed(seed))
    return Batch(prompts, enc(prompts), enc([""] * b), tuple(shape), x0)


def _teacher_raw(d, x, t, cond):
    return d.backbone(**({"hidden_states": x} if d.family == "wan" else {"sample": x}),
                      timestep=d.schedule.model_timestep(t), encoder_hidden_states=cond.embeds, return_dict=False)[0]


@pytest.mark.parametrize("family", ["unet3d", "wan"])
def test_solver_step_equals_an_independent_diffusers_step(family):
    """The CD teacher step (LCM CFG, then DDIM / Euler t_s -> t_s - k) equals diffusers' own
    scheduler step applied to the guided raw output computed by hand."""
    d, shape = _denoiser(family)
    cd = ConsistencyDistillation(d, num_ddim_timesteps=50)
    batch = _batch(shape)
    t_start = torch.tensor([519, 519])
    t = t_start - cd.skip
    w = torch.tensor([7.0, 7.0])
    x_start = d.schedule.add_noise(batch.latents, torch.randn_like(batch.latents), t_start)
    ours = cd.solver_step(x_start, t_start, t, batch.cond, batch.uncond, w)

    with torch.no_grad():
        c, u = _teacher_raw(d, x_start, t_start, batch.cond), _teacher_raw(d, x_start, t_start, batch.uncond)
    guided = c + 7.0 * (c - u)  # LCM: x0_c + w (x0_c - x0_u) <=> out_c + w (out_c - out_u)
    if family == "unet3d":
        ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                            set_alpha_to_one=False, timestep_spacing="trailing")
        ref.set_timesteps(50)  # trailing grid = 999, 979, ... so one step is t -> t - 20 = t - k
        theirs = ref.step(guided, 519, x_start, eta=0.0).prev_sample
    else:
        ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        ref.set_timesteps(sigmas=[(519 + 1) / 1000, (499 + 1) / 1000])
        theirs = ref.step(guided, ref.timesteps[0], x_start).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_grid_skip_and_boundary_endpoints():
    d, _ = _denoiser("unet3d")
    cd = ConsistencyDistillation(d, num_ddim_timesteps=50)
    assert cd.skip == 20 and cd.grid[0].item() == 19 and cd.grid[-1].item() == 999
    assert ConsistencyDistillation(d, num_ddim_timesteps=200).skip == 5  # T2V-Turbo v2


@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_generator_loss_matches_the_formula_written_out(loss):
    """Re-derive the whole CD loss from the same random draws by hand."""
    d, shape = _denoiser("unet3d")
    with torch.no_grad():  # a non-trivial student, so student and target differ
        for p in d.adapter_parameters("student"):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    cd = ConsistencyDistillation(d, num_ddim_timesteps=50, loss=loss, w_min=2.0, w_max=8.0)
    batch = _batch(shape)
    out = cd.generator_loss(batch, 0, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)  # replay the draws in the objective's order
    t_s = cd.grid[torch.randint(0, 50, (2,), generator=g)]
    noise = torch.randn(batch.latents.shape, generator=g)
    w = 2.0 + 6.0 * torch.rand(2, generator=g)
    t = (t_s - 20).clamp(min=0)
    x_s = d.schedule.add_noise(batch.latents, noise, t_s)

    def c_skip_out(tt):
        st = 10.0 * tt.double()
        return (0.25 / (st ** 2 + 0.25)).float().view(-1, 1, 1, 1, 1), (st / (st ** 2 + 0.25).sqrt()).float().view(-1, 1, 1, 1, 1)

    with torch.no_grad():
        cs, co = c_skip_out(t_s)
        f = cs * x_s + co * d(x_s, t_s, batch.cond, role="student", guidance=w).x0
        x_prev = cd.solver_step(x_s, t_s, t, batch.cond, batch.uncond, w)
        cs2, co2 = c_skip_out(t)
        y = cs2 * x_prev + co2 * d(x_prev, t, batch.cond, role="student", guidance=w).x0
    expected = (torch.sqrt((f - y) ** 2 + 1e-6) - 1e-3).mean() if loss == "huber" else ((f - y) ** 2).mean()
    assert out.terms["cd"].item() == pytest.approx(expected.item(), rel=1e-4)
    torch.testing.assert_close(out.x0.detach(), f, rtol=1e-4, atol=1e-5)


def test_loss_gradient_reaches_only_the_student():
    d, shape = _denoiser("wan")
    cd = ConsistencyDistillation(d)
    cd.generator_loss(_batch(shape), 0, torch.Generator().manual_seed(0)).total().backward()
    grads = [p.grad for p in cd.trainable()["student"]]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in d.backbone.named_parameters() if "lora_" not in n)


def test_ema_target_tracks_the_student():
    d, shape = _denoiser("wan")
    cd = ConsistencyDistillation(d, ema_decay=0.9)
    assert cd.target_role == "student_ema" and "student_ema" in d.adapters
    student, ema = d.adapter_parameters("student"), d.adapter_parameters("student_ema")
    assert all(torch.equal(s, e) for s, e in zip(student, ema)) and not any(e.requires_grad for e in ema)
    with torch.no_grad():
        for p in student:
            p.add_(1.0)
    before = [e.clone() for e in ema]
    cd.after_step("student")
    for s, e, b in zip(student, ema, before):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * s)
    assert [p for p in cd.trainable()["student"]] == student  # the EMA copy is never trained


def test_bad_config_names_the_key():
    d, _ = _denoiser("wan")
    with pytest.raises(ValueError, match="objective.loss"):
        ConsistencyDistillation(d, loss="l1")
    with pytest.raises(ValueError, match="objective.num_ddim_timesteps"):
        ConsistencyDistillation(d, num_ddim_timesteps=0)
    with pytest.raises(ValueError, match="objective.w_min"):
        ConsistencyDistillation(d, w_min=9, w_max=3)
    with pytest.raises(ValueError, match="needs real videos"):
        batch = _batch((16, 3, 4, 4))
        batch.latents = None
        ConsistencyDistillation(d).generator_loss(batch, 0, torch.Generator())
