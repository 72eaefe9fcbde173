"""DMD2 and W2S: gradients against closed forms, the critic loss, the update rule, backward
simulation, GAN losses, and W2S's limits (lambda = 0 is DMD2, lambda = 1 matches nothing)."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.objectives.base import Batch
from distill.objectives.dmd2 import DMD2, dm_gradient, dm_loss, gan_critic_loss, gan_generator_loss
from distill.objectives.w2s import W2S
from turbo.denoiser import Denoiser
from turbo.models import tiny_text_encoder, tiny_unet3d, tiny_wan
from turbo.schedule import FlowSchedule, VPSchedule

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _denoiser(family="wan"):
    torch.manual_seed(0)  # peft draws LoRA A matrices from the global RNG
    if family == "wan":
        d, shape = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan"), (16, 3, 4, 4)
    else:
        d, shape = Denoiser(tiny_unet3d(seed=0), VPSchedule(prediction_type="v_prediction"), "unet3d"), (4, 2, 8, 8)
    d.add_adapter("student", 4, 4, TARGETS)
    return d, shape


def _batch(shape, b=2, latents=True):
    enc = tiny_text_encoder(seed=0)
    prompts = ["a red circle moving left", "a green square moving up"][:b]
    x0 = torch.randn(b, *shape, generator=torch.Generator().manual_seed(5)) if latents else None
    return Batch(prompts, enc(prompts), enc([""] * b), tuple(shape), x0)


def _perturb(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_dm_loss_gradient_is_the_normalised_fake_minus_real_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 5, 5, generator=g, requires_grad=True)
    real, fake = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    loss = dm_loss(x, dm_gradient(x.detach(), real, fake))
    (grad,) = torch.autograd.grad(loss, x)
    norm = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = (fake - real) / norm / x.numel()  # p_real - p_fake = x0_fake - x0_real
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-9)


def test_generator_loss_gradient_through_the_objective(monkeypatch):
    """The same identity through DMD2.generator_loss: with the sample a leaf, its gradient equals the
    normalised difference of the scores the objective actually used."""
    d, shape = _denoiser()
    obj = DMD2(d, guidance_scale=3.0)
    _perturb(d.adapter_parameters("critic"), 1)
    batch = _batch(shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(9), requires_grad=True)
    monkeypatch.setattr(obj, "generate", lambda batch, gen: (x, 999))
    seen = {}
    real_score, fake_score = obj.real_score, obj.fake_score
    monkeypatch.setattr(obj, "real_score", lambda *a: seen.setdefault("real", (a, real_score(*a)))[1])
    monkeypatch.setattr(obj, "fake_score", lambda *a: seen.setdefault("fake", (a, fake_score(*a)))[1])
    loss = obj.generator_loss(batch, 0, torch.Generator().manual_seed(0)).terms["dm"]
    (grad,) = torch.autograd.grad(loss, x)
    # both scores' raw outputs converted to x0 in float64, as the reference does
    (x_t, t, _), real = seen["real"]
    r, f = (d.schedule.to_x0(p.out.double(), x_t.double(), t) for p in (real, seen["fake"][1]))
    expected = (f - r) / (x.detach().double() - r).abs().mean(dim=(1, 2, 3, 4), keepdim=True) / x.numel()
    torch.testing.assert_close(grad, expected.float(), rtol=1e-4, atol=1e-10)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["wan", "unet3d"])
def test_critic_loss_is_the_schedules_denoising_loss(family, monkeypatch):
    d, shape = _denoiser(family)
    obj = DMD2(d)
    _perturb(d.adapter_parameters("critic"), 2)
    batch = _batch(shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(obj, "generate", lambda batch, gen: (x, 999))
    loss = obj.critic_loss(batch, 0, torch.Generator().manual_seed(3)).terms["critic/denoise"]

    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (2,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    a, s = d.schedule.alpha_sigma(t, x)
    out = d(a * x + s * eps, t, batch.cond, role="critic").out
    target = eps - x if family == "wan" else a * eps - s * x  # velocity (flow) / v (VP)
    assert loss.item() == pytest.approx(F.mse_loss(out, target).item(), rel=1e-5)


def test_update_rule_steps_the_generator_every_ratio_steps():
    d, _ = _denoiser()
    obj = DMD2(d, dfake_gen_update_ratio=5)
    plan = [obj.updates(s) for s in range(20)]
    assert [s for s, p in enumerate(plan) if "student" in p] == [0, 5, 10, 15]
    assert all(p[-1] == "critic" for p in plan)  # the critic every step, after the generator


def test_backward_simulation_starts_the_generator_at_each_listed_timestep(monkeypatch):
    d, shape = _denoiser()
    steps = [999, 749, 499, 249]
    obj = DMD2(d, denoising_timesteps=steps)
    batch = _batch(shape, latents=False)
    calls = []
    real = d.forward
    monkeypatch.setattr(d, "forward", lambda x, t, c, **kw: (calls.append((int(torch.as_tensor(t).reshape(-1)[0]),
                                                                           torch.is_grad_enabled())),
                                                             real(x, t, c, **kw))[1])
    starts = set()
    for seed in range(40):
        calls.clear()
        _, t_k = obj.generate(batch, torch.Generator().manual_seed(seed))
        k = steps.index(t_k)
        # k chain steps without gradient over the list's prefix, then the trained step at t_k
        assert calls == [(t, False) for t in steps[:k]] + [(t_k, True)]
        starts.add(t_k)
    assert starts == set(steps)


def test_gan_losses_are_their_softplus_forms():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-0.3, 1.5, 0.0])
    sp = lambda z: math.log1p(math.exp(z))
    assert gan_generator_loss(fake).item() == pytest.approx(sum(sp(-z) for z in fake.tolist()) / 3)
    expected = sum(sp(z) for z in fake.tolist()) / 3 + sum(sp(-z) for z in real.tolist()) / 3
    assert gan_critic_loss(real, fake).item() == pytest.approx(expected)


@pytest.mark.parametrize("family", ["wan", "unet3d"])
def test_gan_head_trains_with_the_critic_and_pushes_the_generator(family):
    d, shape = _denoiser(family)
    obj = DMD2(d, gan={"enabled": True, "gen_weight": 1.0, "critic_weight": 1.0})
    assert obj.needs_videos
    batch = _batch(shape)
    critic = obj.critic_loss(batch, 0, torch.Generator().manual_seed(0))
    assert {"critic/denoise", "gan/critic"} <= set(critic.terms)
    critic.total().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.head.parameters())
    gen = obj.generator_loss(batch, 0, torch.Generator().manual_seed(0))
    student = obj.trainable()["student"]
    grads = torch.autograd.grad(gen.terms["gan/generator"], student, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def _pair(weak_weight, guidance_scale=3.0):
    """A DMD2 and a W2S objective on two identical denoisers with the same trained critic."""
    out = []
    for cls, kw in ((DMD2, {}), (W2S, {"weak_weight": weak_weight})):
        d, shape = _denoiser()
        obj = cls(d, guidance_scale=guidance_scale, **kw)
        _perturb(d.adapter_parameters("critic"), 7)
        _perturb(d.adapter_parameters("student"), 8)
        out.append(obj)
    return out, shape


def test_w2s_with_lambda_zero_is_dmd2_exactly():
    (dmd, w2s), shape = _pair(0.0)
    batch = _batch(shape)
    a = dmd.generator_loss(batch, 0, torch.Generator().manual_seed(11))
    b = w2s.generator_loss(batch, 0, torch.Generator().manual_seed(11))
    assert a.terms["dm"].item() == b.terms["dm"].item()
    ga = torch.autograd.grad(a.terms["dm"], dmd.trainable()["student"])
    gb = torch.autograd.grad(b.terms["dm"], w2s.trainable()["student"])
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))


def test_w2s_with_lambda_one_has_no_distribution_matching_gradient():
    (dmd, w2s), shape = _pair(1.0, guidance_scale=1.0)
    batch = _batch(shape)
    loss = w2s.generator_loss(batch, 0, torch.Generator().manual_seed(11)).terms["dm"]
    grads = torch.autograd.grad(loss, w2s.trainable()["student"], allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # while DMD2 (the teacher as real score) does pull the same student
    loss = dmd.generator_loss(batch, 0, torch.Generator().manual_seed(11)).terms["dm"]
    assert any(g is not None and g.abs().sum() > 0
               for g in torch.autograd.grad(loss, dmd.trainable()["student"], allow_unused=True))


def test_w2s_ground_truth_term_needs_and_uses_real_videos():
    d, shape = _denoiser()
    obj = W2S(d, gt_weight=0.5)
    assert obj.needs_videos
    terms = obj.critic_loss(_batch(shape), 0, torch.Generator().manual_seed(0)).terms
    assert terms["critic/gt"].item() > 0


def test_bad_config_fails_at_start_up_naming_the_key():
    d, _ = _denoiser()
    with pytest.raises(ValueError, match="objective.denoising_timesteps"):
        DMD2(d, denoising_timesteps=[1200, 500])
    d, _ = _denoiser()
    with pytest.raises(ValueError, match="objective.denoising_timesteps"):
        DMD2(d, denoising_timesteps=[249, 999])
    d, _ = _denoiser()
    with pytest.raises(ValueError, match="objective.weak_weight"):
        W2S(d, weak_weight=2.0)
    d, _ = _denoiser()
    with pytest.raises(ValueError, match="objective.gan"):
        DMD2(d, gan={"enabled": True, "feature_module": "no.such.block"})


def test_generator_timesteps_are_the_closed_range_of_the_reference():
    """DMD2 draws randint(int(0.02 T), int(0.98 T) + 1): 20 and 980 are both reachable."""
    from turbo.denoiser import Denoiser
    from turbo.models import tiny_wan
    from turbo.schedule import FlowSchedule

    d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan")
    d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v", "to_out.0"])
    objective = DMD2(d)
    t = d.schedule.sample_t(20000, objective.t_lo, objective.t_hi, generator=torch.Generator().manual_seed(0))
    assert (objective.t_lo, objective.t_hi) == (20, 981) and int(t.min()) == 20 and int(t.max()) == 980


def test_dm_direction_converts_both_scores_to_x0_in_float64():
    """Near t = T an eps-prediction x0 = (x_t - s eps) / a divides by a small a, and a critic close to
    the teacher makes the two x0s nearly equal: converting each in float32 before the difference costs
    far more than float32 rounding of the direction itself; the reference converts in float64."""
    from turbo.denoiser import Pred
    from turbo.schedule import VPSchedule
    from distill.objectives.dmd2 import dm_gradient, x0_float64

    schedule = VPSchedule()
    g = torch.Generator().manual_seed(0)
    x, x_t = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g)
    out_real = torch.randn(x.shape, generator=g)
    out_fake = out_real + 1e-3 * torch.randn(x.shape, generator=g)  # a critic that nearly matches the teacher
    t = torch.tensor([990, 999])
    a, s = schedule.alpha_sigma(t, x_t.double())
    x0r, x0f = (x_t.double() - s * out_real.double()) / a, (x_t.double() - s * out_fake.double()) / a
    exact = ((x.double() - x0r) - (x.double() - x0f)) / (x.double() - x0r).abs().mean((1, 2, 3, 4), keepdim=True)
    ours = dm_gradient(x, x0_float64(schedule, Pred(out_real, out_real, out_real), x_t, t),
                       x0_float64(schedule, Pred(out_fake, out_fake, out_fake), x_t, t))
    in_float32 = dm_gradient(x, schedule.to_x0(out_real, x_t, t), schedule.to_x0(out_fake, x_t, t))
    err = lambda y: float(((y.double() - exact).abs().max() / exact.abs().max()))  # noqa: E731
    assert err(ours) < 1e-7 and 10 * err(ours) < err(in_float32)


def test_w2s_ground_truth_term_is_the_critics_flow_loss_on_the_batchs_real_latents():
    """critic/gt written out by hand for the flow schedule: x_t = (1 - s) x0 + s eps, target the
    velocity eps - x0, on the batch's *real* latents; the same formula on other latents differs."""
    d, shape = _denoiser()
    obj = W2S(d, gt_weight=0.5)
    _perturb(d.adapter_parameters("critic"), 3)
    batch = _batch(shape)
    got = obj.critic_loss(batch, 0, torch.Generator().manual_seed(0)).terms["critic/gt"]
    # replay the generator: DMD2's own critic terms draw first, then the ground-truth term
    gen = torch.Generator().manual_seed(0)
    DMD2.critic_loss(obj, batch, 0, gen)

    def by_hand(x0, gen):
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        s = d.schedule.sigmas[t].float().view(-1, 1, 1, 1, 1)
        out = d(((1 - s) * x0 + s * eps), t, batch.cond, role="critic").out
        return 0.5 * ((out - (eps - x0)) ** 2).mean()

    state = gen.get_state()
    torch.testing.assert_close(got, by_hand(batch.latents, gen), rtol=1e-5, atol=1e-7)
    gen.set_state(state)
    other = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(99))
    assert (by_hand(other, gen) - got).abs() > 1e-3 * got.abs()


def _logits(obj, x, batch, seed):
    return obj.discriminate(x, batch, torch.Generator().manual_seed(seed))


def test_gan_gradients_point_the_right_way():
    """A small step along minus the gradient of gan/generator raises D(fake) for the same noise;
    a step of the head along minus gan/critic raises D(real) - D(fake)."""
    d, shape = _denoiser()
    obj = DMD2(d, gan={"enabled": True, "gen_weight": 1.0, "critic_weight": 1.0})
    _perturb(d.adapter_parameters("student"), 4)
    batch = _batch(shape)
    # generator: its sample moves to where the discriminator says "real"
    x, _ = obj.generate(batch, torch.Generator().manual_seed(1))
    x = x.detach().requires_grad_(True)
    loss = gan_generator_loss(_logits(obj, x, batch, 2))
    (g,) = torch.autograd.grad(loss, x)
    before = _logits(obj, x.detach(), batch, 2).mean()
    after = _logits(obj, (x - 0.05 * g / g.norm()).detach(), batch, 2).mean()
    assert after > before
    # critic (the head): real up, fake down
    fake = x.detach()
    margin = lambda: (_logits(obj, batch.latents, batch, 3) - _logits(obj, fake, batch, 4)).mean()
    loss = gan_critic_loss(_logits(obj, batch.latents, batch, 3), _logits(obj, fake, batch, 4))
    head = list(obj.head.parameters())
    grads = torch.autograd.grad(loss, head)
    m0 = margin().item()
    with torch.no_grad():
        for p, g in zip(head, grads):
            p.sub_(0.05 * g)
    assert margin().item() > m0
