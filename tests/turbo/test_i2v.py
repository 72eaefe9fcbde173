"""I2V conditioning against diffusers' WanImageToVideoPipeline, the causal-VAE shortcut, images, errors."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from omegaconf import OmegaConf
from PIL import Image
from transformers import CLIPImageProcessor

from turbo.config import ConfigError
from turbo.i2v import ImageConditioner, build_i2v, load_image, load_image_encoder, tiny_clip_vision
from turbo.models import tiny_text_encoder, tiny_wan, tiny_wan_vae
from turbo.text import TextCond


@pytest.fixture(scope="module")
def vae():
    return tiny_wan_vae(seed=0)


def _video(b=2, f=9, seed=0):
    return torch.rand(b, f, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _wan_pipe(vae, **kw):
    enc = tiny_text_encoder(seed=0)
    return WanImageToVideoPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, vae=vae.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **kw)


def test_causal_vae_first_latent_frame_is_the_first_frame_alone(vae):
    video = _video()
    torch.testing.assert_close(vae.encode(video)[:, :, :1], vae.encode(video[:, :1]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_wan_layout_is_diffusers_prepare_latents(vae, seed):
    """Wan2.1 I2V: [4 mask channels, VAE(first frame + gray frames)], exactly diffusers' condition."""
    image = _video(1, 1, seed)[:, 0]
    noise = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    _, theirs = _wan_pipe(vae).prepare_latents(image * 2 - 1, 1, 16, 32, 32, 9, torch.float32, "cpu", None, noise)
    ours = ImageConditioner(vae, mask_channels=4, order="mask_first", pad="pixels").image_latents(image, 9)
    assert ours.shape == (1, 20, 3, 4, 4)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # the mask: 1 on every channel of latent frame 0, 0 after it
    assert ours[:, :4, 0].eq(1).all() and ours[:, :4, 1:].eq(0).all()
    # Wan pads in pixel space: the gray frames' latents are not zero (hence pad="pixels")
    assert ours[:, 4:, 1:].abs().max() > 1e-3


def test_magic_layout_zero_pads_latents_and_training_path_uses_the_clean_latents(vae):
    """Magic 1-For-1: [first-frame latent, zeros over time, 1 mask channel]; for training the first
    frame's latent is latents[:, :, :1] of the clean video (causal VAE), so no encode is needed."""
    video = _video()
    latents = vae.encode(video)
    magic = ImageConditioner(vae, mask_channels=1, order="latent_first", pad="latents")
    from_image = magic.image_latents(video[:, 0], 9)
    from_latents = magic.image_latents(video[:, 0], 9, first_latent=latents[:, :, :1])
    assert from_image.shape == (2, 17, 3, 4, 4) and magic.channels == 17
    torch.testing.assert_close(from_image, from_latents, rtol=1e-6, atol=1e-6)
    assert torch.equal(from_latents[:, :16, :1], latents[:, :, :1]) and from_latents[:, :16, 1:].eq(0).all()
    assert from_latents[:, 16, 0].eq(1).all() and from_latents[:, 16, 1:].eq(0).all()


def test_apply_conditions_cond_and_uncond_with_the_same_image(vae):
    enc = tiny_text_encoder(seed=0)
    cond, uncond = enc(["a red circle", "a blue square"]), enc(["", ""])
    video = _video()
    c, u = ImageConditioner(vae, image_encoder=tiny_clip_vision(seed=0)).apply([cond, uncond], video[:, 0], 9)
    assert torch.equal(c.image_latents, u.image_latents) and torch.equal(c.image_embeds, u.image_embeds)
    assert torch.equal(c.embeds, cond.embeds) and not torch.equal(u.embeds, c.embeds)
    assert c.image_embeds.shape == (2, 17, 32)
    both = TextCond.cat([u, c])  # what Denoiser.cfg batches
    assert both.image_latents.shape[0] == 4


def test_clip_image_tokens_are_wan_encode_image(vae):
    """Penultimate CLIP hidden states of the first frame, as WanImageToVideoPipeline.encode_image
    (with CLIPImageProcessor) gives them for an image already at the encoder's size."""
    encoder = tiny_clip_vision(seed=0)
    image = _video(1, 1, 3)[:, 0]
    pil = Image.fromarray((image[0].permute(1, 2, 0) * 255).round().byte().numpy())
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = _wan_pipe(vae, image_encoder=encoder.model, image_processor=processor)
    theirs = pipe.encode_image(pil, "cpu")
    ours = encoder(torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255)[None])
    assert ours.shape == (1, 17, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_image_encoder_loads_from_a_diffusers_folder(tmp_path):
    encoder = tiny_clip_vision(seed=0)
    encoder.model.save_pretrained(tmp_path / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "image_processor")
    loaded = load_image_encoder(str(tmp_path))
    x = _video(1, 1)[:, 0]
    assert loaded.image_size == 32
    torch.testing.assert_close(loaded(x), encoder(x))
    with pytest.raises(FileNotFoundError, match="model.i2v.image_encoder.path='/nonexistent'.*image_encoder/config.json"):
        load_image_encoder("/nonexistent")


def test_load_image_covers_and_crops_and_names_the_key(tmp_path):
    wide = torch.zeros(40, 80, 3, dtype=torch.uint8)
    wide[:, 20:60] = 255  # white centre band, black sides
    Image.fromarray(wide.numpy()).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 32, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x[:, :, 8:24].mean() > 0.99  # the centre kept, the sides cropped
    with pytest.raises(FileNotFoundError, match="image=/nonexistent.png: no such file"):
        load_image("/nonexistent.png", 32, 32)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="image=.*bad.png: cannot be read as an image"):
        load_image(tmp_path / "bad.png", 32, 32)


def test_build_checks_keys_and_the_backbone(vae):
    node = OmegaConf.create({"mask_channels": 4, "image_encoder": {"_target_": "turbo.i2v.tiny_clip_vision", "seed": 0}})
    i2v_backbone = tiny_wan(seed=0, in_channels=36, out_channels=16, image_dim=32)
    cond = build_i2v(node, vae, i2v_backbone)
    assert cond.channels == 20 and cond.image_encoder is not None
    assert build_i2v(None, vae) is None
    with pytest.raises(ConfigError, match="unknown keys \\['masks'\\] in model.i2v"):
        build_i2v(OmegaConf.create({"masks": 4}), vae)
    with pytest.raises(ConfigError, match="16 \\+ 16 \\+ 1 = 33 input channels .* but model.backbone takes 36"):
        build_i2v(OmegaConf.create({"mask_channels": 1, "image_encoder": node.image_encoder}), vae, i2v_backbone)
    with pytest.raises(ConfigError, match="image_dim\\).*model.i2v.image_encoder is null"):
        build_i2v(OmegaConf.create({"mask_channels": 4}), vae, i2v_backbone)
    with pytest.raises(ConfigError, match="model.i2v.order must be one of"):
        build_i2v(OmegaConf.create({"order": "sideways"}), vae)


# --- training an I2V student ------------------------------------------------------------------------
# the tiny Wan2.1-I2V teacher with its image conditioning; Wan's transformer splits text from image
# tokens assuming 512 text tokens
I2V = ["model=tiny_wan_i2v", "++model.text_encoder.max_length=512",
       "++model.i2v={mask_channels:4,order:mask_first,pad:pixels,"
       "image_encoder:{_target_:turbo.i2v.tiny_clip_vision,seed:0}}"]


@pytest.mark.parametrize("objective", [[], ["objective=dmd2"]], ids=["cd", "dmd2"])
def test_i2v_student_trains_on_the_first_frames_of_the_batch(tmp_path, objective):
    from distill.train import load_batch, setup, train
    from tests.distill.test_train import cfg_for

    run = setup(cfg_for(*I2V, "train.steps=2", "reward=none", *objective), tmp_path / "run")
    assert run.i2v is not None and run.i2v.channels == 20
    batch = load_batch(run, 0)
    # both CFG halves carry the same image conditioning: mask on latent frame 0, then the latents of
    # [first frame, gray frames], whose first latent frame is the clean video's (causal VAE)
    for c in (batch.cond, batch.uncond):
        assert c.image_latents.shape == (2, 20, 3, 4, 4) and c.image_embeds.shape == (2, 17, 32)
        assert c.image_latents[:, :4, 0].eq(1).all() and c.image_latents[:, :4, 1:].eq(0).all()
        torch.testing.assert_close(c.image_latents[:, 4:, :1], batch.latents[:, :, :1], rtol=1e-5, atol=1e-5)
    assert torch.equal(batch.cond.image_embeds, batch.uncond.image_embeds)
    before = [p.detach().clone() for p in run.denoiser.adapter_parameters("student")]
    train(run)
    assert [r["step"] for r in run.history] == [1, 2]
    assert all(np.isfinite(v) for r in run.history for v in r.values())
    after = run.denoiser.adapter_parameters("student")
    assert any((a - b).abs().max() > 0 for a, b in zip(after, before))


def test_i2v_student_needs_videos(tmp_path):
    from distill.train import setup
    from tests.distill.test_train import cfg_for

    with pytest.raises(ConfigError, match="model.i2v: an I2V student is conditioned on the first frame .* "
                                          "data \\(PromptDataset\\) gives prompts only"):
        setup(cfg_for(*I2V, "objective=dmd2", "data=prompts", "reward=none"), tmp_path / "run")
