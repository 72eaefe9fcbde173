"""rewards.hpsv2: HPSv2's preprocessing, score and checkpoint layout (tiny seeded models, offline)."""


import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from open_clip.tokenizer import SimpleTokenizer

from rewards.base import OPENAI_MEAN, OPENAI_STD, RewardModel
from rewards.hpsv2 import HPSv2Reward, hpsv2_model, hpsv2_reward, resize_longest_and_pad, tiny_hpsv2_reward
from rewards.loading import CheckpointMismatchError
from tests.rewards.test_base import as_uint8, edge_image, smooth_image
from tests.rewards.test_loading import LAYOUTS, layout_mismatches


def official_resize_max_size(pil, size: int) -> torch.Tensor:
    """HPSv2's validation transform with light_augmentation=True, as the official score() builds it
    (hpsv2/src/open_clip/transform.py): ToTensor, ResizeMaxSize(size, fill=0), Normalize."""
    img = T.ToTensor()(pil)
    height, width = img.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        img = TF.resize(img, new_size, T.InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        img = TF.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return T.Normalize(OPENAI_MEAN, OPENAI_STD)(img)


def official_resize_crop(pil, size: int) -> torch.Tensor:
    """The fork's other validation transform: ToTensor, Resize(size, BICUBIC), CenterCrop, Normalize."""
    img = TF.center_crop(TF.resize(T.ToTensor()(pil), size, T.InterpolationMode.BICUBIC), size)
    return T.Normalize(OPENAI_MEAN, OPENAI_STD)(img)


def random_video(b=2, f=3, h=40, w=56, seed=0):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


# Video-frame shapes: 320x512 (VideoCrafter2), portrait, 480x848, tiny, longer side already 224.
SHAPES = [(320, 512), (512, 320), (480, 848), (45, 70), (224, 224)]


@pytest.mark.parametrize("hw", SHAPES)
def test_pad_preprocessing_equals_the_official_transform(hw):
    # The official path is torchvision on float tensors (ToTensor first), not PIL resampling,
    # so a float pipeline can match it exactly. Measured: max |diff| 0.0 on all shapes and images.
    for img in (smooth_image(*hw), edge_image(*hw), torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))):
        x, pil = as_uint8(img)
        ours = resize_longest_and_pad(x[None], 224, OPENAI_MEAN, OPENAI_STD)[0]
        torch.testing.assert_close(ours, official_resize_max_size(pil, 224), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", SHAPES)
def test_crop_mode_equals_the_forks_resize_crop_transform(hw):
    reward = tiny_hpsv2_reward(image_size=224, resize_mode="crop")
    x, pil = as_uint8(smooth_image(*hw))
    torch.testing.assert_close(reward.preprocess(x[None])[0], official_resize_crop(pil, 224), atol=1e-5, rtol=0)


def test_pad_geometry_of_a_white_video_frame():
    # 320x512 -> 140x224 content, 42 black rows above and below (before normalising).
    pixels = resize_longest_and_pad(torch.ones(1, 3, 320, 512), 224, OPENAI_MEAN, OPENAI_STD)[0]
    mean, std = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)
    black, white = (0 - mean) / std, (1 - mean) / std
    torch.testing.assert_close(pixels[:, :42], black.expand(3, 42, 224))
    torch.testing.assert_close(pixels[:, 182:], black.expand(3, 42, 224))
    torch.testing.assert_close(pixels[:, 42:182], white.expand(3, 140, 224), atol=1e-5, rtol=0)


def test_score_is_the_mean_frame_cosine_of_officially_preprocessed_frames():
    reward = tiny_hpsv2_reward(seed=3)
    video, prompts = random_video(), ["a red ball rolling", "a cat"]
    frames = (video.flatten(0, 1) * 255).round() / 255  # exactly representable as uint8
    model = reward.model
    with torch.no_grad():
        pixels = torch.stack([official_resize_max_size(as_uint8(f)[1], 32) for f in frames])
        image = F.normalize(model.encode_image(pixels), dim=-1).view(2, 3, -1)
        text = F.normalize(model.encode_text(SimpleTokenizer(context_length=32)(prompts)), dim=-1)
        expected = torch.einsum("bfd,bd->bf", image, text).mean(1)  # official: diag(image @ text.T), no logit_scale
    scores = reward(frames.view_as(video), prompts)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_logit_scale_is_not_applied():
    reward = tiny_hpsv2_reward(seed=0)
    before = reward(random_video(), ["a", "b"])
    with torch.no_grad():
        reward.model.logit_scale.fill_(5.0)
    torch.testing.assert_close(reward(random_video(), ["a", "b"]), before, atol=0, rtol=0)
    assert before.abs().max() <= 1


def test_gradient_reaches_every_pixel_in_pad_mode_but_not_the_cropped_border():
    video = random_video(b=1, f=2).requires_grad_(True)
    tiny_hpsv2_reward(seed=0)(video, ["a"]).sum().backward()
    assert torch.isfinite(video.grad).all() and (video.grad[..., :, 0].abs() > 0).any()  # left column: kept
    assert (video.grad != 0).float().mean() > 0.95
    video.grad = None
    tiny_hpsv2_reward(seed=0, resize_mode="crop")(video, ["a"]).sum().backward()
    assert video.grad[..., :, 0].abs().max() == 0  # cropped away
    assert (video.grad[..., 20, 20:36] != 0).all()


def test_reward_protocol_and_bad_mode():
    reward = tiny_hpsv2_reward()
    assert isinstance(reward, RewardModel) and reward.kind == "image" and reward.name == "hpsv2"
    assert not any(p.requires_grad for p in reward.parameters())
    with pytest.raises(ValueError, match="resize_mode must be 'pad' or 'crop'"):
        tiny_hpsv2_reward(resize_mode="squash")


def test_hpsv2_reward_loads_an_hps_style_checkpoint(tmp_path, tiny_arch):
    source = tiny_hpsv2_reward(seed=7)
    torch.save({"state_dict": source.model.state_dict(), "epoch": 1}, tmp_path / "HPS_v2.1_compressed.pt")
    reward = hpsv2_reward(str(tmp_path / "HPS_v2.1_compressed.pt"), arch=tiny_arch, name="hps")
    assert isinstance(reward, HPSv2Reward) and reward.image_size == 32 and reward.resize_mode == "pad"
    video = random_video()
    torch.testing.assert_close(reward(video, ["x", "y"]), source(video, ["x", "y"]), atol=1e-6, rtol=0)


def test_hpsv2_reward_refuses_a_checkpoint_of_another_shape(tmp_path, tiny_arch):
    state = tiny_hpsv2_reward(seed=7).model.state_dict()
    state.pop("ln_final.bias")
    torch.save({"state_dict": state}, tmp_path / "hps.pt")
    with pytest.raises(CheckpointMismatchError, match=r"reward 'hpsv2'.*reward.hpsv2.model.checkpoint.*1 missing key\(s\) \[ln_final.bias\]"):
        hpsv2_reward(str(tmp_path / "hps.pt"), arch=tiny_arch)
    with pytest.raises(FileNotFoundError, match="set reward.hpsv2.model.checkpoint="):
        hpsv2_reward(str(tmp_path / "absent.pt"), arch=tiny_arch)


def test_full_size_layout_matches_the_hps_checkpoint():
    with torch.device("meta"):
        model = hpsv2_model("ViT-H-14", device="meta")
    assert layout_mismatches(model, LAYOUTS["hpsv2_open_clip_vit_h_14"]) == []
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)  # ViT-H-14: GELU, not QuickGELU
    assert model.visual.image_size == (224, 224)
    # The check fails on another architecture (ViT-L-14 has 446 keys).
    with torch.device("meta"):
        other = hpsv2_model("ViT-L-14", device="meta")
    assert layout_mismatches(other, LAYOUTS["hpsv2_open_clip_vit_h_14"])
