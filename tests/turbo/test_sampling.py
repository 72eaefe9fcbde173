"""Samplers against diffusers' scheduler loops on the same tiny seeded weights."""

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from turbo.denoiser import Denoiser
from turbo.models import tiny_text_encoder, tiny_unet3d, tiny_wan
from turbo.sampling import sample_consistency, sample_teacher
from turbo.schedule import ConsistencyBoundary, FlowSchedule, VPSchedule


def _setup(family):
    if family == "unet3d":
        return Denoiser(tiny_unet3d(seed=0), VPSchedule(), "unet3d"), (4, 2, 8, 8)
    return Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan"), (16, 3, 4, 4)


def _raw(d, x, t_model, emb):
    kw = {"hidden_states": x} if d.family == "wan" else {"sample": x}
    return d.backbone(**kw, timestep=t_model, encoder_hidden_states=emb, return_dict=False)[0]


@pytest.mark.parametrize("family", ["unet3d", "wan"])
def test_teacher_sampler_matches_a_diffusers_scheduler_loop(family):
    d, shape = _setup(family)
    enc = tiny_text_encoder(seed=0)
    cond, uncond = enc(["a red circle moving left", "a blue square moving up"]), enc(["", ""])
    steps, scale = 5, 4.0
    ours = sample_teacher(d, cond, uncond, shape, steps, scale, torch.Generator().manual_seed(0))

    if family == "unet3d":
        ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                            set_alpha_to_one=True, timestep_spacing="trailing")
        ref.set_timesteps(steps)
        step_kw = {"eta": 0.0}
    else:  # our flow grid as unshifted sigmas; diffusers shifts them and appends the final 0
        ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        ref.set_timesteps(sigmas=((d.schedule.inference_timesteps(steps) + 1) / 1000).tolist())
        step_kw = {}
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    emb = torch.cat([uncond.embeds, cond.embeds])
    with torch.no_grad():
        for t in ref.timesteps:
            out = _raw(d, torch.cat([x, x]), t.repeat(4), emb)
            u, c = out.chunk(2)
            x = ref.step(u + scale * (c - u), t, x, **step_kw).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_consistency_sampler_steps_and_boundary():
    d, shape = _setup("wan")
    d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v", "to_out.0"])
    enc = tiny_text_encoder(seed=0)
    cond = enc(["a red circle moving left"])
    seen = []
    real = d.forward
    d.forward = lambda x, t, c, **kw: (seen.append(int(torch.as_tensor(t).reshape(-1)[0])), real(x, t, c, **kw))[1]
    out4 = sample_consistency(d, cond, shape, 4, torch.Generator().manual_seed(0))
    assert seen == [999, 759, 519, 279]
    # one step is exactly the boundary-scaled x0 prediction from pure noise at t = 999
    seen.clear()
    one = sample_consistency(d, cond, shape, 1, torch.Generator().manual_seed(0))
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    c_skip, c_out = ConsistencyBoundary()(999, x)
    expected = c_skip * x + c_out * real(x, 999, cond, role="student").x0
    torch.testing.assert_close(one, expected)
    assert not torch.allclose(out4, one)


def test_diffusers_grid_runs_on_its_own_points_without_swapping_the_schedule():
    """On the continuous grid the denoiser runs on the plan's GridSchedule (network timesteps
    T * sigma of diffusers' FlowMatchEuler grid), passed to each call; the hook gets indices of that
    schedule, and the model's own schedule is never replaced, not even while the loop runs."""
    d, shape = _setup("wan")
    own = d.schedule
    cond = tiny_text_encoder(seed=0)(["a red circle moving left"])
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ref.set_timesteps(3)
    fed, hooked = [], []
    real_call = d.spec.call
    d.spec = dataclasses.replace(d.spec, call=lambda b, x, t, c: (fed.append(t[0].item()), real_call(b, x, t, c))[1])
    plan = own.sampling_plan(3, "diffusers")
    hook = lambda x, t: (hooked.append((t, plan.schedule.sigmas[t].item() if t is not None else 0.0,
                                        d.schedule is own)), x)[1]
    out = sample_teacher(d, cond, None, shape, 3, 1.0, torch.Generator().manual_seed(0), grid="diffusers",
                         after_step=hook)
    assert fed == pytest.approx(ref.timesteps.tolist(), rel=1e-6)
    assert [t for t, _, _ in hooked] == [0, 1, 2, None]
    assert [s for _, s, _ in hooked] == pytest.approx([*ref.sigmas[:3].tolist(), 0.0], rel=1e-6)
    assert all(same for _, _, same in hooked)
    assert d.schedule is own and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="the sampling plan has 3 steps, but steps=4"):
        sample_teacher(d, cond, None, shape, 4, 1.0, torch.Generator(), grid=own.sampling_plan(3))


def test_a_fixed_sampler_with_another_step_count_takes_the_schedules_trailing_timesteps():
    from turbo.sampling import Sampler

    trained = Sampler("fixed", timesteps=(999, 499))
    assert trained.with_steps(4).timesteps == (999, 749, 499, 249)
    assert trained.with_steps(3).timesteps == tuple(FlowSchedule(shift=3.0).inference_timesteps(3).tolist())
    assert trained.with_steps(2) is trained  # its own count: the trained list, unchanged
