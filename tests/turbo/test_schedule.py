"""Schedules against their closed forms and against diffusers' own schedulers."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from turbo.schedule import ConsistencyBoundary, FlowSchedule, GridSchedule, VPSchedule, ddim_plan, lcm_timesteps


def _xs(shape=(3, 4, 2, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
def test_vp_add_noise_matches_ddpm(kind):
    sched = VPSchedule(beta_schedule=kind, beta_start=0.00085, beta_end=0.012)
    ref = DDPMScheduler(beta_schedule=kind, beta_start=0.00085, beta_end=0.012)
    x0, eps = _xs()
    t = torch.tensor([0, 499, 999])
    ours = sched.add_noise(x0.float(), eps.float(), t)
    theirs = ref.add_noise(x0.float(), eps.float(), t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sched.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-6, atol=1e-7)


def test_vp_v_prediction_target_matches_diffusers_velocity():
    sched = VPSchedule(prediction_type="v_prediction")
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, eps = _xs()
    t = torch.tensor([3, 250, 990])
    torch.testing.assert_close(sched.target(x0.float(), eps.float(), t),
                               ref.get_velocity(x0.float(), eps.float(), t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", [VPSchedule(), VPSchedule(prediction_type="v_prediction"), FlowSchedule(shift=5.0)])
def test_conversions_invert_the_forward_process(schedule):
    """A perfect prediction (the schedule's own target) must give back x0 and eps exactly."""
    x0, eps = _xs()
    t = torch.tensor([0, 400, 999])
    x_t = schedule.add_noise(x0, eps, t)
    out = schedule.target(x0, eps, t)
    x0_hat, eps_hat = schedule.to_x0_eps(out, x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


def test_flow_closed_form_and_diffusers_scale_noise():
    shift = 3.0
    sched = FlowSchedule(shift=shift)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    x0, eps = _xs()
    for t in (0, 317, 999):
        u = (t + 1) / 1000
        s = shift * u / (1 + (shift - 1) * u)  # closed form of the shift
        assert sched.sigmas[t].item() == pytest.approx(s, rel=1e-12)
        # diffusers keeps its train grid descending: index 999 - t is our t
        ts = ref.timesteps[999 - t]
        assert sched.model_timestep(t).item() == pytest.approx(ts.item(), rel=1e-5)
        theirs = ref.scale_noise(x0.float(), ts.reshape(1), eps.float())
        torch.testing.assert_close(sched.add_noise(x0.float(), eps.float(), t), theirs, rtol=1e-5, atol=1e-5)


def test_flow_ddim_step_is_diffusers_euler_step():
    sched = FlowSchedule(shift=5.0)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    # diffusers' own 4-step grid ends at its sigma_min rather than on our integer grid, so hand it
    # the unshifted points of ours (u = (t + 1) / T) and let it apply the shift itself
    ref.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    x0, eps = _xs()
    v = torch.randn_like(x0)  # any model output
    x_t = sched.add_noise(x0, eps, 999)
    ours_ts = sched.inference_timesteps(4)
    for i, t in enumerate(ours_ts.tolist()):
        # our timestep index maps to the same network timestep diffusers uses
        assert sched.model_timestep(t).item() == pytest.approx(ref.timesteps[i].item(), rel=1e-4)
    t, t_prev = ours_ts[0].item(), ours_ts[1].item()
    x0_hat, eps_hat = sched.to_x0_eps(v, x_t, t)
    ours = sched.ddim_step(x0_hat, eps_hat, t_prev)
    ref._step_index = None
    theirs = ref.step(v.float(), ref.timesteps[0], x_t.float()).prev_sample
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_vp_ddim_step_matches_diffusers_ddim(prediction_type):
    sched = VPSchedule(prediction_type=prediction_type)
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=False, timestep_spacing="trailing", prediction_type=prediction_type)
    ref.set_timesteps(50)
    assert ref.timesteps.flip(0).tolist() == sched.ddim_grid(50).tolist()
    x0, eps = _xs()
    out = torch.randn_like(x0).float()
    x_t = sched.add_noise(x0, eps, 519).float()
    x0_hat, eps_hat = sched.to_x0_eps(out, x_t, 519)
    ours = sched.ddim_step(x0_hat, eps_hat, 499)
    theirs = ref.step(out, 519, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_grids():
    s = VPSchedule()
    assert s.ddim_grid(50)[:2].tolist() == [19, 39] and s.ddim_grid(50)[-1].item() == 999
    assert lcm_timesteps(4, s.ddim_grid(50)).tolist() == [999, 759, 519, 279]
    assert s.inference_timesteps(4).tolist() == [999, 749, 499, 249]
    with pytest.raises(ValueError, match="num_steps"):
        s.inference_timesteps(0)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        s.sample_t(2, lo=10, hi=5)


def test_sample_t_range_and_determinism():
    s = VPSchedule()
    t1 = s.sample_t(1000, 20, 980, generator=torch.Generator().manual_seed(1))
    t2 = s.sample_t(1000, 20, 980, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t1, t2) and t1.min() >= 20 and t1.max() < 980


def test_consistency_boundary_closed_form():
    b = ConsistencyBoundary(sigma_data=0.5, timestep_scaling=10.0)
    like = torch.zeros(3, 2)
    c_skip, c_out = b(torch.tensor([0, 1, 999]), like)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # identity at the boundary
    assert c_skip[1].item() == pytest.approx(0.25 / (100 + 0.25))
    assert c_out[2].item() == pytest.approx(9990 / (9990 ** 2 + 0.25) ** 0.5)


def test_index_plan_is_the_integer_grid_landing_on_the_next_timestep():
    plan = FlowSchedule().sampling_plan(4)
    assert plan.timesteps == (999, 749, 499, 249) and plan.targets == (749, 499, 249, None)
    with pytest.raises(ValueError, match="sampler grid must be one of \\['index', 'diffusers'\\], found 'karras'"):
        VPSchedule().sampling_plan(4, "karras")


@pytest.mark.parametrize("shift", [3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 4, 7, 50])
def test_flow_diffusers_plan_is_flow_match_euler_set_timesteps(shift, steps):
    """Our continuous grid holds diffusers' float32 sigmas and network timesteps bit for bit."""
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(steps)
    plan = FlowSchedule(shift=shift).sampling_plan(steps, "diffusers")
    grid = plan.schedule
    assert isinstance(grid, GridSchedule) and plan.timesteps == tuple(range(steps))
    assert plan.targets == (*range(1, steps), None)
    assert torch.equal(grid.sigmas.float(), ref.sigmas[:-1]) and ref.sigmas[-1].item() == 0.0
    assert torch.equal(grid.model_timestep(torch.arange(steps)), ref.timesteps)
    # alpha + sigma = 1 on every point, so the step is diffusers' Euler step (see the flow test above)
    torch.testing.assert_close(grid.alphas + grid.sigmas, torch.ones(steps, dtype=torch.float64))


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("leading", 0), ("trailing", 0)])
@pytest.mark.parametrize("steps", [1, 4, 7, 50])
@pytest.mark.parametrize("alpha_one", [False, True])
def test_ddim_plan_is_diffusers_ddim(spacing, offset, steps, alpha_one):
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=alpha_one, steps_offset=offset, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    sched = VPSchedule()
    plan = ddim_plan(sched, steps, spacing=spacing, steps_offset=offset, set_alpha_to_one=alpha_one)
    assert list(plan.timesteps) == ref.timesteps.tolist()
    like = torch.zeros(1)
    for t, target in zip(plan.timesteps, plan.targets):
        prev = t - 1000 // steps  # diffusers' DDIM lands here, whatever the spacing
        want = ref.alphas_cumprod[prev] if prev >= 0 else ref.final_alpha_cumprod
        got = 1.0 if target is None else sched.alpha_sigma(target, like)[0].item() ** 2
        assert got == pytest.approx(want.item(), rel=1e-6)
    assert sched.sampling_plan(steps, "diffusers") == ddim_plan(sched, steps)  # leading, offset 1, abar_0 at the end


def test_consistency_boundary_equals_lcm_schedulers_scalings():
    """Our boundary scalings are LCMScheduler's (which fixes sigma_data at 0.5; ours takes the
    objective's sigma_data); a wrong timestep_scaling would move them."""
    from diffusers import LCMScheduler

    from turbo.schedule import ConsistencyBoundary

    t = torch.tensor([0, 1, 19, 259, 999])
    like = torch.zeros(len(t), 4, 2, 3, 3)
    for scaling in (10.0, 1.0):
        ref = LCMScheduler(timestep_scaling=scaling)
        c_skip, c_out = ConsistencyBoundary(0.5, scaling)(t, like)
        for i, ti in enumerate(t.tolist()):
            want_skip, want_out = ref.get_scalings_for_boundary_condition_discrete(ti)
            assert c_skip[i].flatten()[0].item() == pytest.approx(want_skip, rel=1e-6)
            assert c_out[i].flatten()[0].item() == pytest.approx(want_out, rel=1e-6)
    assert ConsistencyBoundary(0.5, 10.0)(t, like)[0][0].flatten()[0] == 1.0  # f(x, 0) = x
