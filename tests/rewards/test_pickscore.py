"""rewards.pickscore: CLIPImageProcessor parity, logit_scale x cosine, local-folder loading, full-size layout."""

import json

import numpy as np
import pytest
import torch
import transformers
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from rewards.base import OPENAI_MEAN, OPENAI_STD, RewardModel, preprocess_images
from rewards.loading import CheckpointMismatchError
from rewards.pickscore import (
    PickScoreReward,
    openai_clip_tokenizer,
    pickscore_reward,
    processor_pixels,
    tiny_pickscore_reward,
)
from tests.rewards.test_base import ONE_UINT8_LEVEL, as_uint8, edge_image, smooth_image
from tests.rewards.test_loading import LAYOUTS, layout_mismatches

# PickScore ran transformers 4.27, whose CLIPImageProcessor resized with PIL; transformers 5
# keeps that pipeline as CLIPImageProcessorPil (its CLIPImageProcessor resizes uint8 tensors).
PilProcessor = getattr(transformers, "CLIPImageProcessorPil", CLIPImageProcessor)
PROMPTS = ["a red ball", "a photo of a cat jumping over a very lazy dog, high quality"]  # different lengths


def official_pixels(pil, processor=PilProcessor, size=224, crop=224) -> torch.Tensor:
    proc = processor(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})
    return torch.as_tensor(np.asarray(proc(images=pil, return_tensors="np")["pixel_values"][0]))


def random_video(b=2, f=3, h=40, w=56, seed=0):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("hw", [(320, 512), (512, 320), (480, 848), (45, 70), (256, 256), (600, 256)])
def test_preprocessing_matches_the_pil_clip_image_processor(hw):
    for img in (smooth_image(*hw), edge_image(*hw), torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))):
        x, pil = as_uint8(img)
        ours = processor_pixels(x[None], 224, 224, OPENAI_MEAN, OPENAI_STD, match_pil=True)[0]
        # Measured: 0.0 (bit-exact: Pillow's fixed-point two-pass resampling is reproduced). Before
        # that, a float resize clipped after each pass: max 0.0124-0.0164, mean <= 0.0046.
        torch.testing.assert_close(ours, official_pixels(pil), atol=1e-6, rtol=0)


def test_preprocessing_is_exact_when_no_resize_is_needed():
    x, pil = as_uint8(smooth_image(300, 224))  # shorter side already 224: crop + normalise only
    ours = processor_pixels(x[None], 224, 224, OPENAI_MEAN, OPENAI_STD)[0]
    torch.testing.assert_close(ours, official_pixels(pil), atol=1e-5, rtol=0)  # measured 0.0


def test_crop_anchor_is_transformers_floor_not_torchvision_round():
    # 480x848 -> 224x395: (395 - 224) / 2 = 85.5; transformers crops at 85, torchvision at 86.
    x, pil = as_uint8(torch.rand(3, 480, 848, generator=torch.Generator().manual_seed(2)))
    want = official_pixels(pil)
    ours = processor_pixels(x[None], 224, 224, OPENAI_MEAN, OPENAI_STD)[0]
    torchvision_anchor = preprocess_images(x[None], 224, OPENAI_MEAN, OPENAI_STD, match_pil=True)[0]
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=0)  # measured 0.0
    assert (torchvision_anchor - want).abs().mean() > 0.1  # one column off: measured mean 0.43


def test_without_match_pil_matches_the_tensor_processor_on_smooth_images():
    # transformers 5's default CLIPImageProcessor resizes uint8 tensors (clipping overshoot by
    # saturation). Measured on smooth images: max 0.0152-0.0160 either way.
    x, pil = as_uint8(smooth_image(320, 512))
    diff = (processor_pixels(x[None], 224, 224, OPENAI_MEAN, OPENAI_STD, match_pil=False)[0]
            - official_pixels(pil, CLIPImageProcessor)).abs()
    assert diff.max() <= ONE_UINT8_LEVEL + 2e-3


def test_score_is_logit_scale_exp_times_cosine_from_the_model_forward():
    reward = tiny_pickscore_reward(seed=2)
    with torch.no_grad():
        reward.model.clip.logit_scale.fill_(3.0)  # exp(3) = 20.09, not the init value
    video = random_video()
    clip, tok = reward.model.clip, reward.hf_tokenizer
    with torch.no_grad():
        pixels = processor_pixels(video.flatten(0, 1), 32, 32, OPENAI_MEAN, OPENAI_STD)
        text = tok(PROMPTS, padding=True, truncation=True, max_length=32, return_tensors="pt")  # with attention mask
        out = clip(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
        # logits_per_image[i, j] = logit_scale.exp() * cos(image i, text j); frame b*F+f pairs with prompt b.
        expected = out.logits_per_image.view(2, 3, 2)[torch.arange(2), :, torch.arange(2)].mean(1)
        manual = torch.exp(torch.tensor(3.0)) * torch.einsum(
            "bfd,bd->bf", out.image_embeds.view(2, 3, -1), out.text_embeds).mean(1)
    scores = reward(video, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, manual, atol=1e-4, rtol=0)
    assert scores.abs().max() <= 20.09  # a scaled cosine


def test_tokenizer_is_the_openai_bpe():
    tok = openai_clip_tokenizer()
    ids = tok(PROMPTS, padding="max_length", max_length=32, return_tensors="pt").input_ids
    ref = SimpleTokenizer(context_length=32)(PROMPTS)
    lengths = (ref != 0).sum(1)
    for row, n in zip(range(2), lengths):
        assert ids[row, :n].tolist() == ref[row, :n].tolist()
    assert ids[0, 0] == 49406 and ids[0, lengths[0] - 1] == 49407 and tok.pad_token_id == 49407


def test_gradient_reaches_pixels_and_parameters_stay_frozen():
    reward = tiny_pickscore_reward(seed=0)
    video = random_video().requires_grad_(True)
    reward(video, PROMPTS).sum().backward()
    assert torch.isfinite(video.grad).all() and (video.grad.flatten(2).abs().amax(-1) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
    reward.train()
    assert not any(m.training for m in reward.modules())
    assert isinstance(reward, RewardModel) and reward.kind == "image" and reward.name == "pickscore"


def save_folder(reward: PickScoreReward, path, resize=32, crop=32):
    """A local PickScore-style folder: config.json + model.safetensors + tokenizer + processor config."""
    reward.model.clip.save_pretrained(path)
    reward.hf_tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop}).save_pretrained(path)
    return str(path)


def test_pickscore_reward_loads_a_local_folder(tmp_path):
    source = tiny_pickscore_reward(seed=5)
    path = save_folder(source, tmp_path / "PickScore_v1")
    reward = pickscore_reward(path)
    assert reward.resize == 32 and reward.image_size == 32 and reward.interpolation == "bicubic"
    video = random_video()
    torch.testing.assert_close(reward(video, PROMPTS), source(video, PROMPTS), atol=1e-5, rtol=0)


def test_processor_folder_is_separate_and_read(tmp_path):
    source = tiny_pickscore_reward(seed=5)
    model_dir = tmp_path / "model"
    source.model.clip.save_pretrained(model_dir)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json.*processor_path"):
        pickscore_reward(str(model_dir))
    proc = save_folder(source, tmp_path / "proc", resize=40, crop=32)
    reward = pickscore_reward(str(model_dir), processor_path=proc)
    assert (reward.resize, reward.image_size) == (40, 32)


def test_missing_or_unexpected_weights_raise_instead_of_reinitialising(tmp_path):
    path = save_folder(tiny_pickscore_reward(seed=5), tmp_path / "ps")
    state = load_file(f"{path}/model.safetensors")
    state.pop("text_model.final_layer_norm.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, f"{path}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        pickscore_reward(path)
    msg = str(err.value)
    assert "text_model.final_layer_norm.weight" in msg and "extra.weight" in msg and "reward.pickscore.model.path" in msg
    with pytest.raises(FileNotFoundError, match="no config.json.*reward.pickscore.model.path"):
        pickscore_reward(str(tmp_path / "absent"))


def test_an_unsupported_processor_is_refused(tmp_path):
    path = save_folder(tiny_pickscore_reward(seed=5), tmp_path / "ps")
    cfg = json.loads((tmp_path / "ps" / "preprocessor_config.json").read_text())
    (tmp_path / "ps" / "preprocessor_config.json").write_text(json.dumps({**cfg, "do_center_crop": False}))
    with pytest.raises(ValueError, match="not a CLIP processor this reward implements"):
        pickscore_reward(path)


def test_full_size_layout_matches_pickscore_v1():
    layout = LAYOUTS["pickscore_hf_clip_vit_h_14"]
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**layout["config"]))
    assert layout_mismatches(model, layout) == []
    # The check fails on another CLIP (transformers' default config is ViT-B/32).
    with torch.device("meta"):
        assert layout_mismatches(CLIPModel(CLIPConfig()), layout)
