"""Samplers against diffusers' scheduler loops on the same tiny seeded weights."""

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
