"""rewards.base: input checks and preprocessing parity with torchvision and open_clip (PIL)."""

import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from rewards.base import OPENAI_MEAN, OPENAI_STD, RewardInputError, check_video, preprocess_images

WHO = "reward 'clip'"
ONE_UINT8_LEVEL = 1 / 255 / min(OPENAI_STD)  # 0.0150 in normalised units


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """3,H,W in [0, 1]: sinusoids plus a blob, no saturated hard edges (like a natural image)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.empty(3, h, w)
    for c in range(3):
        a = torch.rand(4, generator=g)
        img[c] = 0.5 + 0.25 * torch.sin(6 * a[0] * xx + 5 * a[1] * yy + 3 * a[2]) + 0.2 * torch.cos(12 * a[3] * xx * yy)
    img += 0.3 * torch.exp(-((xx - 0.4) ** 2 + (yy - 0.6) ** 2) / 0.02)
    return img.clamp(0, 1)


def edge_image(h: int, w: int) -> torch.Tensor:
    """3,H,W: saturated rectangles with hard edges (like the toy world), where bicubic overshoots."""
    img = torch.zeros(3, h, w)
    img[0, h // 4 : 3 * h // 4, w // 5 : w // 2] = 1
    img[1, h // 3 :, w // 2 :] = 1
    img[2] = 0.5
    return img


def as_uint8(img: torch.Tensor) -> tuple[torch.Tensor, Image.Image]:
    """The same pixels as a [0, 1] float tensor and as a PIL image."""
    u8 = (img * 255).round().to(torch.uint8)
    return u8.float() / 255, Image.fromarray(u8.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("hw", [(45, 70), (70, 45), (90, 140), (20, 27), (32, 50)])
def test_preprocess_matches_torchvision_v2(hw):
    # Non-square inputs: landscape, portrait, downscale, upscale, short side already 32.
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    tv = v2.Compose(
        [
            v2.Resize(32, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(32),
            v2.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    ours = preprocess_images(x, 32, OPENAI_MEAN, OPENAI_STD)
    assert ours.shape == (2, 3, 32, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, tv(x), atol=1e-5, rtol=0)  # measured: 0.0 (same kernels)


@pytest.mark.parametrize("hw,size", [((45, 70), 32), ((90, 140), 32), ((20, 27), 32), ((240, 320), 224)])
def test_preprocess_approximates_open_clip_pil(hw, size):
    x, pil = as_uint8(smooth_image(*hw))
    official = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)(pil)
    diff = (preprocess_images(x[None], size, OPENAI_MEAN, OPENAI_STD)[0] - official).abs()
    # Measured on these smooth images: max 0.0147-0.0160, mean 0.0034-0.0046. PIL rounds to
    # uint8 after each of its two resampling passes, so about one uint8 level (0.0150 here)
    # is the floor for a float pipeline; 1e-2 is not reachable.
    assert diff.max() <= 0.02
    assert diff.mean() <= 0.006


@pytest.mark.parametrize("hw,size", [((45, 70), 32), ((20, 27), 32), ((240, 320), 224)])
def test_match_pil_clips_overshoot_like_pil(hw, size):
    official = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    for img in (edge_image(*hw), torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))):
        x, pil = as_uint8(img)
        want = official(pil)
        plain = preprocess_images(x[None], size, OPENAI_MEAN, OPENAI_STD)[0]
        matched = preprocess_images(x[None], size, OPENAI_MEAN, OPENAI_STD, match_pil=True)[0]
        # Measured: plain differs by 0.07-0.54 (PIL clips bicubic overshoot); match_pil by <= 0.0159.
        assert (plain - want).abs().max() > 0.05
        assert (matched - want).abs().max() <= ONE_UINT8_LEVEL + 2e-3


def test_preprocess_is_differentiable():
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0), requires_grad=True)
    preprocess_images(x, 32, OPENAI_MEAN, OPENAI_STD).sum().backward()
    # Columns outside the centre crop get no gradient, those inside do.
    assert x.grad[..., 20, 22:34].abs().min() > 0
    assert x.grad[..., :, 0].abs().max() == 0


def test_preprocess_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N,3,H,W"):
        preprocess_images(torch.rand(3, 8, 8), 8, OPENAI_MEAN, OPENAI_STD)


def video(b=2, f=3, h=8, w=8):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_check_video_accepts_valid_input():
    check_video(video(), ["a", "b"], min_frames=3, who=WHO)
    check_video(video() * 1.0005, ["a", "b"], who=WHO)  # within the 1e-3 tolerance


def test_check_video_0_255_input():
    with pytest.raises(RewardInputError) as err:
        check_video(video() * 255, ["a", "b"], who=WHO)
    msg = str(err.value)
    assert WHO in msg and "[0, 1]" in msg and "0..255" in msg and "divide by 255" in msg


def test_check_video_slightly_out_of_range_has_no_255_hint():
    v = video()
    v[1, 2, 0, 3, 3] = -0.1
    with pytest.raises(RewardInputError) as err:
        check_video(v, ["a", "b"], who=WHO)
    assert "min -0.1 " in str(err.value) and "255" not in str(err.value)


def test_check_video_wrong_ndim():
    with pytest.raises(RewardInputError) as err:
        check_video(torch.rand(2, 3, 8, 8), ["a", "b"], who=WHO)
    msg = str(err.value)
    assert WHO in msg and "B,F,3,H,W" in msg and "(2, 3, 8, 8)" in msg and "unsqueeze(1)" in msg
    with pytest.raises(RewardInputError, match=r"found shape \(2, 3, 4, 8, 8\)"):
        check_video(torch.rand(2, 3, 4, 8, 8), ["a", "b"], who=WHO)  # 4 channels


def test_check_video_uint8():
    with pytest.raises(RewardInputError, match="floating-point.*torch.uint8"):
        check_video(torch.zeros(1, 1, 3, 4, 4, dtype=torch.uint8), ["a"], who=WHO)


def test_check_video_empty_prompts():
    with pytest.raises(RewardInputError) as err:
        check_video(video(), [], who=WHO)
    assert WHO in str(err.value) and "empty prompt list" in str(err.value)


def test_check_video_prompt_count_mismatch():
    with pytest.raises(RewardInputError) as err:
        check_video(video(b=2), ["a", "b", "c"], who=WHO)
    assert WHO in str(err.value) and "expected 2 prompts" in str(err.value) and "found 3" in str(err.value)


def test_check_video_single_string_prompt():
    with pytest.raises(RewardInputError, match="list of strings, found str"):
        check_video(video(b=1), "a cat", who=WHO)


def test_check_video_too_few_frames():
    with pytest.raises(RewardInputError) as err:
        check_video(video(f=3), ["a", "b"], min_frames=8, who="reward 'viclip'")
    assert "reward 'viclip'" in str(err.value) and "at least 8 frames" in str(err.value) and "found 3" in str(err.value)


def test_check_video_nan():
    v = video()
    v[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(RewardInputError, match="NaN"):
        check_video(v, ["a", "b"], who=WHO)
