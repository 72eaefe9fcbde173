"""Our samplers against diffusers' own pipelines on tiny seeded weights, end to end.

Same initial noise, prompt embeddings (passed as prompt_embeds / negative_prompt_embeds), guidance
scale and step count; our teacher sampler on the "diffusers" grid (turbo.schedule.sampling_plan):
- WanPipeline with FlowMatchEulerDiscreteScheduler(shift=3) (Euler, continuous sigmas);
- WanImageToVideoPipeline (first-frame latents + mask channels, CLIP image tokens: turbo.i2v);
- TextToVideoSDPipeline with DDIMScheduler, "leading" (steps_offset 1, last step to alpha-bar_0:
  the SD / ModelScope config) and "trailing" (set_alpha_to_one) spacing;
- a student LoRA trained by turbo-train, loaded into WanPipeline, against turbo-generate.
Measured on CPU float32: Wan T2V / I2V latents to <= 3e-6 absolute (values up to ~6), ModelScope DDIM
latents to <= 5e-5 absolute at values up to ~60 (<= 1e-6 relative), the LoRA test's frames to ~6e-7.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, FlowMatchEulerDiscreteScheduler, TextToVideoSDPipeline, WanImageToVideoPipeline,
                       WanPipeline, WanTransformer3DModel)
from hydra import compose, initialize_config_module
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPImageProcessor

from turbo.denoiser import Denoiser
from turbo.generate import load, sample_latents
from turbo.i2v import ImageConditioner, tiny_clip_vision
from turbo.lora import WEIGHTS
from turbo.models import tiny_sd_vae, tiny_text_encoder, tiny_unet3d, tiny_wan, tiny_wan_vae
from turbo.sampling import sample_teacher
from turbo.schedule import FlowSchedule, VPSchedule, ddim_plan

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
# How far two float32 runs of the same sampler may drift apart (diffusers and we order a few
# reductions differently: CFG as u + s (c - u) vs (1 - s) u + s c, sigma differences taken before or
# after the cast, BLAS blocking). Each network evaluation rounds at ~EPS32 relative to the largest
# activation, LAYERS such roundings stack per evaluation, the guidance scale s multiplies the error of
# (c - u), and the steps add theirs (the samplers are contractive, so linear growth bounds it):
#     |ours - theirs| <= LAYERS * s * steps * EPS32 * max|x|
# (ModelScope trailing-7: 4 * 5 * 7 * 1.19e-7 * 61 = 1.0e-3 against 1.8e-5 measured with torch 2.14.1,
# diffusers 0.42.1; a wrong timestep or sigma costs > 1e-2, see the index-grid checks). No rtol: the
# error scales with the largest value in the computation, not with each element.
LAYERS = 4


def assert_float32_close(ours, theirs, steps: int, guidance: float) -> None:
    atol = LAYERS * max(1.0, guidance) * steps * EPS32 * float(theirs.abs().max().clamp(min=1.0))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)


PROMPTS = ["a red circle moving left", "a blue square moving up"]


def _noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def wan():
    enc, vae = tiny_text_encoder(seed=0), tiny_wan_vae(seed=0)
    return enc, vae, Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan")


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_wan_teacher_is_wan_pipeline(wan, steps):
    enc, vae, d = wan
    cond, uncond = enc(PROMPTS), enc(["", ""])
    shape = vae.latent_shape(9, 32, 32)
    ours = sample_teacher(d, cond, uncond, shape, steps, 5.0, torch.Generator().manual_seed(0), grid="diffusers")
    pipe = WanPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, transformer=d.backbone, vae=vae.vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds, height=32, width=32, num_frames=9,
                  num_inference_steps=steps, guidance_scale=5.0, latents=_noise((2, *shape)),
                  output_type="latent").frames
    assert_float32_close(ours, theirs, steps, 5.0)
    if steps > 1:  # our default integer grid is another sampler: the grid is what makes the parity
        index = sample_teacher(d, cond, uncond, shape, steps, 5.0, torch.Generator().manual_seed(0))
        assert (index - theirs).abs().max() > 1e-2


def test_wan_i2v_teacher_is_wan_image_to_video_pipeline():
    """First-frame latents (4 mask channels, pixel-space padding) and CLIP image tokens, CFG keeping
    the image in the unconditional half: our I2V teacher gives WanImageToVideoPipeline's latents."""
    enc, vae = tiny_text_encoder(seed=0, max_length=512), tiny_wan_vae(seed=0)  # Wan splits 512 text tokens
    d = Denoiser(tiny_wan(seed=0, in_channels=36, out_channels=16, image_dim=32), FlowSchedule(shift=3.0), "wan")
    encoder = tiny_clip_vision(seed=0)
    i2v = ImageConditioner(vae, mask_channels=4, order="mask_first", pad="pixels", image_encoder=encoder)
    i2v.check_backbone(d.backbone)
    pixels = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1)) * 255).round().byte()
    image = Image.fromarray(pixels.numpy())
    first = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
    cond, uncond = i2v.apply([enc(PROMPTS[:1]), enc([""])], first, 9)
    shape = vae.latent_shape(9, 32, 32)
    ours = sample_teacher(d, cond, uncond, shape, 3, 5.0, torch.Generator().manual_seed(0), grid="diffusers")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = WanImageToVideoPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, vae=vae.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), image_processor=processor,
                                   image_encoder=encoder.model, transformer=d.backbone)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(image=image, prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds, height=32, width=32,
                  num_frames=9, num_inference_steps=3, guidance_scale=5.0, latents=_noise((1, *shape)),
                  output_type="latent").frames
    assert_float32_close(ours, theirs, 3, 5.0)


@pytest.mark.parametrize("spacing,steps", [("leading", 4), ("trailing", 7)])
def test_modelscope_teacher_is_text_to_video_sd_pipeline_with_ddim(spacing, steps):
    """"leading": the shipped SD / ModelScope DDIM config (steps_offset 1, set_alpha_to_one false), our
    grid="diffusers"; "trailing" with 7 steps: DDIM lands on t - T // 7, not on the next timestep."""
    enc, vae = tiny_text_encoder(seed=0), tiny_sd_vae(seed=0)
    d = Denoiser(tiny_unet3d(seed=0), VPSchedule(), "unet3d")
    cond, uncond = enc(PROMPTS), enc(["", ""])
    shape = vae.latent_shape(3, 64, 64)
    if spacing == "leading":
        scheduler_kw, grid = dict(steps_offset=1, set_alpha_to_one=False), "diffusers"
    else:
        scheduler_kw = dict(timestep_spacing="trailing", set_alpha_to_one=True)
        grid = ddim_plan(d.schedule, steps, spacing="trailing", steps_offset=0, set_alpha_to_one=True)
    ours = sample_teacher(d, cond, uncond, shape, steps, 5.0, torch.Generator().manual_seed(0), grid=grid)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              **scheduler_kw)
    pipe = TextToVideoSDPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, unet=d.backbone, vae=vae.vae,
                                 scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds, height=64, width=64, num_frames=3,
                  num_inference_steps=steps, guidance_scale=5.0, latents=_noise((2, *shape)),
                  output_type="latent").frames
    assert_float32_close(ours, theirs, steps, 5.0)


# --- a trained student LoRA in diffusers -------------------------------------------------------------
STEPS, SCALE, SEED, PROMPT = 3, 4.0, 5, "a red circle moving right"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny turbo-train run (CD, pure diffusers LoRA: no guidance embedding; alpha != rank so the
    LoRA scale must travel in the file's config), the tiny teacher saved as a diffusers folder, and
    turbo-generate's decoded frames of the student and of the teacher on the diffusers grid."""
    from distill.train import run_training
    from tests.distill.test_train import cfg_for as train_cfg

    tmp = tmp_path_factory.mktemp("lora_parity")
    run_training(train_cfg("student.guidance_embedding=false", "student.alpha=4", "train.steps=2", "reward=none",
                           "objective.optim.student.optimizer.lr=1e-2"), tmp / "run")
    sampler = ["sampler.name=teacher", f"sampler.teacher.steps={STEPS}", "sampler.teacher.grid=diffusers",
               f"sampler.teacher.guidance_scale={SCALE}"]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        student_cfg = compose("generate", overrides=[f"lora={tmp / 'run' / 'student'}", *sampler])
        teacher_cfg = compose("generate", overrides=sampler)
    student, teacher = load(student_cfg), load(teacher_cfg)
    frames = {who: p.vae.decode(sample_latents(p, c, PROMPT, SEED))
              for who, p, c in [("student", student, student_cfg), ("teacher", teacher, teacher_cfg)]}
    teacher.denoiser.backbone.save_pretrained(tmp / "model" / "transformer")
    return tmp, student, frames


def _pipeline(tmp, stage):
    pipe = WanPipeline(tokenizer=stage.text.tokenizer, text_encoder=stage.text.model, vae=stage.vae.vae,
                       transformer=WanTransformer3DModel.from_pretrained(tmp / "model", subfolder="transformer"),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(pipe, stage):
    cond, uncond = stage.text([PROMPT]), stage.text([""])
    return pipe(prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds, height=32, width=32, num_frames=9,
                num_inference_steps=STEPS, guidance_scale=SCALE, output_type="pt",
                latents=_noise((1, *stage.vae.latent_shape(9, 32, 32)), SEED)).frames  # B,F,3,H,W in [0, 1]


def test_trained_lora_in_wan_pipeline_gives_turbo_generate_frames(trained):
    """The LoRA file's weights, key layout and scale (its config) in diffusers' own LoRA layers."""
    tmp, stage, frames = trained
    pipe = _pipeline(tmp, stage)
    path = tmp / "run" / "student" / WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
    config = {k.removeprefix("transformer."): v for k, v in config.items()}
    pipe.transformer.load_lora_adapter(load_file(path), prefix="transformer",
                                       metadata={f"transformer.{k}": v for k, v in config.items()})
    theirs = _frames(pipe, stage)
    assert_float32_close(frames["student"], theirs, STEPS, SCALE)
    assert (frames["teacher"] - theirs).abs().max() > 1e-3  # the LoRA is not a no-op


def test_trained_lora_loads_with_pipeline_load_lora_weights(trained):
    tmp, stage, frames = trained
    pipe = _pipeline(tmp, stage)
    pipe.load_lora_weights(str(tmp / "run" / "student"))
    assert_float32_close(frames["student"], _frames(pipe, stage), STEPS, SCALE)
