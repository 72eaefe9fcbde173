"""Model families: full-size architectures from the real configs, tiny seeded variants that run,
parity with the diffusers pipelines' prompt encoding and call conventions, and clear errors."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import conf
from turbo.config import build
from turbo.denoiser import Denoiser
from turbo.families import FAMILIES, HUNYUAN_EMBEDDED_GUIDANCE, fold_frames, unfold_frames
from turbo.models import (load_backbone, load_text_encoder, load_vae, random_backbone, tiny_clip_text_encoder,
                          tiny_hunyuan, tiny_hunyuan_text_encoder, tiny_hunyuan_vae, tiny_sd3, tiny_sd3_text_encoder,
                          tiny_sd_vae, tiny_sdxl_text_encoder, tiny_unet2d)
from turbo.models.full import parameter_count, random_cond
from turbo.text import TextCond

MODEL_CONF = Path(conf.__file__).parent / "model"
PROMPTS = ["a red circle moving right", "a blue square"]

# published sizes of the denoising networks (parameters) and the relative tolerance we accept
PUBLISHED = {
    "wan2.1_t2v_1.3b": (1.42e9, 0.03),
    "wan2.1_t2v_14b": (14.3e9, 0.03),
    "wan2.1_i2v_14b_480p": (16.4e9, 0.03),  # the 14B network plus image cross-attention (k/v of 257 tokens)
    "hunyuanvideo_t2v": (12.8e9, 0.03),
    "hunyuanvideo_i2v": (12.8e9, 0.03),
    "modelscope_t2v": (1.41e9, 0.01),
    "sd15": (859.52e6, 0.001),
    "sdxl": (2.567e9, 0.001),
    "sd3_medium": (2.028e9, 0.005),
}
TINY = ["tiny_wan", "tiny_modelscope", "tiny_wan_i2v", "tiny_hunyuan", "tiny_sd15", "tiny_sdxl", "tiny_sd3"]


def _model_cfg(name, overrides=()):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("train", overrides=[f"model={name}", *overrides]).model


# --- full size ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_config_builds_the_published_size_without_weights(name):
    m = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    backbone = random_backbone(m.family, m.arch)  # meta device: no memory
    assert type(backbone).__name__ == FAMILIES[m.family].backbone_class
    expected, tol = PUBLISHED[name]
    assert parameter_count(backbone) == pytest.approx(expected, rel=tol)
    # the config's module names exist in the real architecture, not only in the tiny one
    backbone.get_submodule(m.time_embedding_module)
    backbone.get_submodule(FAMILIES[m.family].middle_module(backbone))
    names = [n for n, _ in backbone.named_modules()]
    for target in m.lora_targets:
        assert any(n == target or n.endswith("." + target) for n in names), target


def test_i2v_networks_read_the_conditioning_channels():
    wan = random_backbone("wan", OmegaConf.load(MODEL_CONF / "wan2.1_i2v_14b_480p.yaml").arch)
    hy = random_backbone("hunyuan", OmegaConf.load(MODEL_CONF / "hunyuanvideo_i2v.yaml").arch)
    assert (wan.config.in_channels, wan.config.out_channels) == (16 + 16 + 4, 16)
    assert (hy.config.in_channels, hy.config.out_channels) == (16 + 16 + 1, 16)
    assert parameter_count(wan) > parameter_count(random_backbone("wan", OmegaConf.load(MODEL_CONF / "wan2.1_t2v_14b.yaml").arch))


def test_random_backbone_refuses_unknown_arch_keys():
    with pytest.raises(ValueError, match=r"model.arch has keys \['num_layerz'\].*SD3Transformer2DModel"):
        random_backbone("sd3", {"num_layerz": 2})


# --- tiny variants --------------------------------------------------------------------------------
def _tiny(name):
    m = _model_cfg(name)
    d = Denoiser(build(m.backbone, "model.backbone"), build(m.schedule, "model.schedule"), m.family,
                 m.time_embedding_module)
    return m, d, build(m.text_encoder, "model.text_encoder"), build(m.vae, "model.vae")


def _conds(name, d, text, shape):
    cond, uncond = text(PROMPTS), text(["", ""])
    if name == "tiny_wan_i2v":  # I2V conditioning as turbo.i2v builds it (here random, of the right shapes)
        extra = random_cond(d.backbone, "wan", 2, shape[1:], generator=torch.Generator().manual_seed(1))
        cond = cond.replace(image_latents=extra.image_latents, image_embeds=extra.image_embeds)
        uncond = uncond.replace(image_latents=extra.image_latents, image_embeds=extra.image_embeds)
    return cond, uncond


@pytest.mark.parametrize("name", TINY)
def test_tiny_config_runs_cfg_and_takes_a_zero_init_lora(name):
    m, d, text, vae = _tiny(name)
    assert parameter_count(d.backbone) < 2e6
    frames = 1 if FAMILIES[m.family].video is False else 5
    shape = vae.latent_shape(frames, 32, 32)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 900])
    cond, uncond = _conds(name, d, text, shape)
    c, u = d(x, t, cond), d(x, t, uncond)
    assert c.out.shape == x.shape and torch.isfinite(c.out).all()
    assert not torch.allclose(c.out, u.out)  # the prompt reaches the network
    g = d.cfg(x, t, cond, uncond, 3.0)
    torch.testing.assert_close(g.out, u.out + 3.0 * (c.out - u.out), rtol=1e-4, atol=1e-4)
    params = d.add_adapter("student", 4, 4, list(m.lora_targets), guidance_embedding=True)
    w = torch.tensor([4.0, 6.0])
    torch.testing.assert_close(d(x, t, cond, role="student", guidance=w).out, c.out, rtol=0, atol=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    assert not torch.allclose(d(x, t, cond, role="student", guidance=w).out, c.out)


def test_image_families_treat_frames_as_independent_images():
    _, d, text, _ = _tiny("tiny_sdxl")
    x = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t, cond = torch.tensor([10, 500]), text(PROMPTS)
    out = d(x, t, cond).out
    for j in range(3):
        torch.testing.assert_close(out[:, :, j:j + 1], d(x[:, :, j:j + 1], t, cond).out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unfold_frames(fold_frames(x), 2), x, rtol=0, atol=0)
    # the student's guidance embedding (one w per video) reaches every frame of an image family
    params = d.add_adapter("student", 4, 4, ["to_q", "to_k", "to_v"], guidance_embedding=True)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    w = torch.tensor([2.0, 7.0])
    out = d(x, t, cond, role="student", guidance=w).out
    for j in range(3):
        torch.testing.assert_close(out[:, :, j:j + 1], d(x[:, :, j:j + 1], t, cond, role="student", guidance=w).out,
                                   rtol=1e-4, atol=1e-5)


def test_sdxl_call_matches_the_pipeline_conditioning():
    """SDXL's UNet gets text_embeds = pooled and time ids (H, W, 0, 0, H, W) in pixels."""
    unet = tiny_unet2d(cross_attention_dim=64, pooled_dim=32)
    x, t = torch.randn(2, 4, 1, 6, 4), torch.tensor([3, 700])
    cond = TextCond(torch.randn(2, 77, 64), torch.ones(2, 77, dtype=torch.long), torch.randn(2, 32))
    ids = torch.tensor([[48.0, 32.0, 0.0, 0.0, 48.0, 32.0]]).repeat(2, 1)
    theirs = unet(x[:, :, 0], t, encoder_hidden_states=cond.embeds,
                  added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": ids}).sample
    ours = FAMILIES["unet2d"].call(unet, x, t, cond)
    torch.testing.assert_close(ours[:, :, 0], theirs, rtol=1e-5, atol=1e-6)


def test_hunyuan_call_passes_mask_pooled_and_embedded_guidance():
    hy = tiny_hunyuan()
    x, t = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0])
    cond = TextCond(torch.randn(1, 8, 32), torch.tensor([[1] * 5 + [0] * 3]), torch.randn(1, 32))
    theirs = hy(x, t, cond.embeds, cond.mask, cond.pooled, guidance=torch.tensor([HUNYUAN_EMBEDDED_GUIDANCE * 1000]),
                return_dict=False)[0]
    torch.testing.assert_close(FAMILIES["hunyuan"].call(hy, x, t, cond), theirs, rtol=1e-5, atol=1e-6)
    # the mask is read: masked-out tokens do not matter
    other = cond.replace(embeds=torch.cat([cond.embeds[:, :5], torch.randn(1, 3, 32)], 1))
    torch.testing.assert_close(FAMILIES["hunyuan"].call(hy, x, t, other), theirs, rtol=1e-5, atol=1e-5)
    # I2V (latent_concat): 16 + 16 + 1 channels in, 16 out
    i2v = tiny_hunyuan(in_channels=33, out_channels=16, guidance_embeds=False, image_condition_type="latent_concat")
    out = FAMILIES["hunyuan"].call(i2v, x, t, cond.replace(image_latents=torch.randn(1, 17, 2, 4, 4)))
    assert out.shape == x.shape


@pytest.mark.parametrize("family,backbone", [("unet2d", lambda: tiny_unet2d(cross_attention_dim=64, pooled_dim=32)),
                                             ("sd3", tiny_sd3), ("hunyuan", tiny_hunyuan)])
def test_missing_pooled_text_is_one_clear_error(family, backbone):
    b = backbone()
    cond = random_cond(b, family, 1, text_tokens=8).replace(pooled=None)
    with pytest.raises(ValueError, match=rf"model.family={family!r} needs a pooled text embedding"):
        FAMILIES[family].call(b, torch.randn(1, b.config.out_channels, 1, 4, 4), torch.tensor([1.0]), cond)


# --- prompt encoding: parity with the diffusers pipelines ----------------------------------------
def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sd15_and_sdxl_text_match_diffusers_encode_prompt():
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    enc = tiny_clip_text_encoder()
    pipe = StableDiffusionPipeline(vae=tiny_sd_vae().vae, text_encoder=enc.model, tokenizer=enc.tokenizer,
                                   unet=tiny_unet2d(), scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pos, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    _close(enc(PROMPTS).embeds, pos)
    _close(enc(["", ""]).embeds, neg)

    enc = tiny_sdxl_text_encoder()
    pipe = StableDiffusionXLPipeline(vae=tiny_sd_vae().vae, text_encoder=enc.model, text_encoder_2=enc.model_2,
                                     tokenizer=enc.tokenizer, tokenizer_2=enc.tokenizer_2,
                                     unet=tiny_unet2d(cross_attention_dim=64, pooled_dim=32), scheduler=DDIMScheduler())
    pos, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    c, u = enc(PROMPTS), enc(["", ""])
    assert c.embeds.shape == (2, 77, 64) and c.pooled.shape == (2, 32)
    _close(c.embeds, pos)
    _close(c.pooled, pooled)
    _close(u.embeds, neg)
    _close(u.pooled, neg_pooled)  # force_zeros_for_empty_prompt
    assert not u.embeds.any()


def test_sd3_text_matches_diffusers_encode_prompt():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    enc = tiny_sd3_text_encoder()
    pipe = StableDiffusion3Pipeline(transformer=tiny_sd3(), scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=tiny_sd_vae(latent_channels=16).vae, text_encoder=enc.model,
                                    tokenizer=enc.tokenizer, text_encoder_2=enc.model_2, tokenizer_2=enc.tokenizer_2,
                                    text_encoder_3=enc.model_3, tokenizer_3=enc.tokenizer_3)
    pos, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, None, None, device="cpu",
                                                      do_classifier_free_guidance=True, max_sequence_length=32)
    c, u = enc(PROMPTS), enc(["", ""])
    assert c.embeds.shape == (2, 77 + 32, 64) and c.pooled.shape == (2, 32) and c.mask.shape == (2, 77 + 32)
    _close(c.embeds, pos)
    _close(c.pooled, pooled)
    _close(u.embeds, neg)
    _close(u.pooled, neg_pooled)
    assert not c.embeds[:, :77, 32:].any()  # CLIP features zero-padded to T5's width


def test_hunyuan_text_matches_diffusers_encode_prompt():
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    enc = tiny_hunyuan_text_encoder()
    assert enc.template == DEFAULT_PROMPT_TEMPLATE["template"]
    assert enc.crop_start == len(enc.template.split("{}")[0].encode())  # byte tokenizer, no BOS
    pipe = HunyuanVideoPipeline(text_encoder=enc.model, tokenizer=enc.tokenizer, transformer=tiny_hunyuan(),
                                vae=tiny_hunyuan_vae().vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                                text_encoder_2=enc.model_2, tokenizer_2=enc.tokenizer_2)
    embeds, pooled, mask = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=32,
                                              prompt_template={"template": enc.template, "crop_start": enc.crop_start})
    c = enc(PROMPTS)
    _close(c.embeds, embeds)
    _close(c.pooled, pooled)
    assert torch.equal(c.mask, mask.long())
    # the prompt's bytes, then the template's closing "<|eot_id|>" and EOS, are the real tokens
    assert c.mask.sum(1).tolist() == [min(32, len(p) + len("<|eot_id|>") + 1) for p in PROMPTS]


def test_text_encoders_cache_and_stay_frozen():
    enc = tiny_sdxl_text_encoder()
    a = enc(["a cat", "a dog"])
    assert set(enc._cache) == {"a cat", "a dog"}
    b = enc(["a dog", "a cat"])
    assert torch.equal(a.embeds[0], b.embeds[1]) and torch.equal(a.pooled[1], b.pooled[0])
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.train().training and not enc.model_2.training


# --- VAEs -----------------------------------------------------------------------------------------
def test_sd3_vae_shifts_and_scales():
    vae = tiny_sd_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609)
    video = torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    z = vae.encode(video)
    raw = vae.vae.encode(video[0] * 2 - 1).latent_dist.mode()  # frames as a batch
    torch.testing.assert_close(z[0].transpose(0, 1), (raw - 0.0609) * 1.5305)
    torch.testing.assert_close(vae.decode(z), ((vae.vae.decode(raw).sample / 2 + 0.5).clamp(0, 1))[None],
                               rtol=1e-4, atol=1e-5)


def test_hunyuan_vae_is_causal_4x_in_time():
    vae = tiny_hunyuan_vae()
    assert (vae.temporal, vae.spatial, vae.latent_channels, vae.scaling_factor) == (4, 8, 16, 0.476986)
    assert vae.latent_shape(9, 32, 48) == (16, 3, 4, 6)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.check_video_size(8, 32, 32)
    video = torch.rand(1, 9, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    z = vae.encode(video)
    torch.testing.assert_close(z, vae.vae.encode(video.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode() * 0.476986)
    full = vae.decode(z)
    assert full.shape == video.shape
    # causal convolutions, but GroupNorm statistics pool over all frames: a latent prefix decodes
    # differently, so decode_frames decodes the whole video (unlike Wan's prefix decoding)
    prefix = vae.decode(z[:, :, :1])[:, 0]
    assert not torch.allclose(prefix, full[:, 0], atol=1e-2)
    torch.testing.assert_close(vae.decode_frames(z, torch.tensor([0, 3])), full[:, [0, 3]], rtol=1e-5, atol=1e-6)


# --- local folders --------------------------------------------------------------------------------
def test_real_folders_load_what_the_tiny_models_saved(fake_checkpoints):
    sd3 = fake_checkpoints["model.path@sd3_medium"]
    x, t = torch.randn(1, 16, 1, 4, 4), torch.tensor([300.0])
    cond = tiny_sd3_text_encoder()(PROMPTS[:1])
    loaded = load_text_encoder(sd3, max_length=32, kind="sd3")(PROMPTS[:1])
    _close(loaded.embeds, cond.embeds)
    _close(loaded.pooled, cond.pooled)
    _close(FAMILIES["sd3"].call(load_backbone(sd3, "sd3"), x, t, cond), FAMILIES["sd3"].call(tiny_sd3(), x, t, cond))
    vae = load_vae(sd3)
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 1.5305, 0.0609)
    hy = load_text_encoder(fake_checkpoints["model.path@hunyuanvideo_t2v"], max_length=32, kind="hunyuan",
                           crop_start=None)
    _close(hy(PROMPTS).embeds, tiny_hunyuan_text_encoder()(PROMPTS).embeds)
    assert load_vae(fake_checkpoints["model.path@hunyuanvideo_t2v"]).causal
    assert load_text_encoder(fake_checkpoints["model.path@sdxl"], kind="sdxl", max_length=77).zero_empty_prompt


def test_a_folder_of_another_family_is_one_clear_error(fake_checkpoints):
    sd15 = fake_checkpoints["model.path@sd15"]
    m = _model_cfg("sd3_medium", [f"model.path={sd15}"])
    with pytest.raises(ValueError) as e:
        build(m.backbone, "model.backbone")
    msg = str(e.value)
    assert f"model.path={sd15!r}" in msg and "SD3Transformer2DModel" in msg and "UNet2DConditionModel" in msg
    with pytest.raises(ValueError, match=r"model.family='hunyuan' expects transformer/ to hold a "
                                         r"HunyuanVideoTransformer3DModel, found unet/ holding a UNet2DConditionModel"):
        load_backbone(sd15, "hunyuan")
    with pytest.raises(ValueError, match=r"expects transformer/ to hold a SD3Transformer2DModel, found "
                                         r"HunyuanVideoTransformer3DModel"):
        load_backbone(fake_checkpoints["model.path@hunyuanvideo_t2v"], "sd3")
    with pytest.raises(ValueError, match=r"kind='sdxl' expects text_encoder/ to hold a CLIPTextModel, found LlamaModel"):
        load_text_encoder(fake_checkpoints["model.path@hunyuanvideo_t2v"], kind="sdxl")
    with pytest.raises(ValueError, match=r"model.text_encoder.kind must be one of .* found 'llama'"):
        load_text_encoder(sd15, kind="llama")
