"""rewards.base: input checks and preprocessing parity with torchvision and open_clip (PIL)."""

import numpy as np
import open_clip
import PIL
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from rewards.base import (
    OPENAI_MEAN,
    OPENAI_STD,
    RewardInputError,
    check_video,
    pil_resize_levels,
    preprocess_images,
    to_uint8_levels,
)

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


@pytest.mark.parametrize("hw,size", [((45, 70), 32), ((90, 140), 32), ((20, 27), 32), ((240, 320), 224), ((512, 200), 224)])
def test_match_pil_equals_open_clip_pil_pipeline(hw, size):
    # Downscale, upscale, landscape, portrait; (512, 200) is taller than 2:1, where Pillow 13
    # resamples vertically first.
    official = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    noise = torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))
    for img in (smooth_image(*hw), edge_image(*hw), noise):
        x, pil = as_uint8(img)
        want = official(pil)
        matched = preprocess_images(x[None], size, OPENAI_MEAN, OPENAI_STD, match_pil=True)[0]
        # Measured: 0.0 everywhere (bit-exact; before Pillow's fixed-point resampling was
        # reproduced: max 0.0126-0.0160, mean up to 0.0046, one uint8 level).
        torch.testing.assert_close(matched, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw,size", [((45, 70), 32), ((20, 27), 32), ((240, 320), 224)])
def test_plain_float_resize_misses_pils_clipping(hw, size):
    official = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    for img in (edge_image(*hw), torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))):
        x, pil = as_uint8(img)
        plain = preprocess_images(x[None], size, OPENAI_MEAN, OPENAI_STD)[0]
        # PIL clips bicubic overshoot after each pass, a float resize does not. Measured: 0.07-0.54.
        assert (plain - official(pil)).abs().max() > 0.05


def pillow_resize(u8: torch.Tensor, height: int, width: int, resample=Image.BICUBIC) -> torch.Tensor:
    """C,H,W uint8 -> C,height,width float levels from PIL's Image.resize."""
    out = Image.fromarray(u8.permute(1, 2, 0).numpy()).resize((width, height), resample)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1).float()


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
    "hw,out",
    [
        ((240, 320), (224, 298)),  # both sides shrink (horizontal pass first)
        ((61, 47), (130, 101)),  # both grow
        ((93, 14), (25, 6)),  # height shrinks by > 2x the width's pixels: vertical first in Pillow 13
        ((35, 4), (34, 121)),  # one grows, one shrinks: vertical first in Pillow 13
        ((60, 90), (60, 41)),  # width only: one pass
        ((1080, 1920), (224, 398)),  # 1080p frame, downscale 4.8x (wide filter support)
    ],
)
def test_pil_resize_levels_is_bit_exact_with_pillow(hw, out, interpolation):
    g = torch.Generator().manual_seed(sum(hw))
    resample = Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR
    for u8 in (
        torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8),  # noise: overshoot, clipping
        (torch.rand(3, *hw, generator=g) > 0.5).to(torch.uint8) * 255,  # saturated hard edges
    ):
        got = pil_resize_levels(u8.float()[None], *out, interpolation)[0]
        assert torch.equal(got, pillow_resize(u8, *out, resample))  # measured: equal in 300 random cases too


def test_pil_pass_order_follows_the_installed_pillow():
    u8 = torch.randint(0, 256, (3, 93, 14), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    want = pillow_resize(u8, 25, 6)
    vertical_first = int(PIL.__version__.split(".")[0]) >= 13
    ours = pil_resize_levels(u8.float()[None], 25, 6, vertical_first=vertical_first)[0]
    other = pil_resize_levels(u8.float()[None], 25, 6, vertical_first=not vertical_first)[0]
    assert torch.equal(ours, want)
    assert (other - want).abs().max() >= 1  # the order matters: both passes round to uint8


def test_to_uint8_levels_rounds_forward_and_passes_gradient_straight_through():
    x = torch.tensor([-0.001, 0.0, 0.3, 0.5, 1 / 510, 0.9999, 1.0005], requires_grad=True)
    levels = to_uint8_levels(x)
    torch.testing.assert_close(levels, (x.detach() * 255).round().clamp(0, 255), atol=0, rtol=0)
    levels.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 255.0), atol=0, rtol=0)


def test_pil_resize_gradient_is_pillows_linear_map_and_zero_where_clipped():
    # A 0/255 step downscaled 16 -> 11 (one horizontal pass): bicubic over- and undershoots
    # next to the edge, where Pillow clips to 255 and 0.
    levels = torch.cat([torch.zeros(8), torch.full((8,), 255.0)]).view(1, 1, 1, 16)
    jac = torch.autograd.functional.jacobian(lambda x: pil_resize_levels(x, 1, 11), levels).view(11, 16)
    out = pil_resize_levels(levels, 1, 11).view(11)
    clipped = jac.abs().sum(1) == 0
    assert 0 < clipped.sum() < 11
    assert set(out[clipped].tolist()) <= {0.0, 255.0}
    # Unclipped outputs: the gradient row is Pillow's weights (summing to 1), and rounding
    # levels . row gives the output.
    torch.testing.assert_close(jac[~clipped].sum(1), torch.ones(int((~clipped).sum())), atol=1e-5, rtol=0)
    assert ((levels.view(16) @ jac[~clipped].T) - out[~clipped]).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("match_pil", [False, True])
def test_preprocess_is_differentiable(match_pil):
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0), requires_grad=True)
    preprocess_images(x, 32, OPENAI_MEAN, OPENAI_STD, match_pil=match_pil).sum().backward()
    # Columns outside the centre crop get no gradient, those inside do.
    assert x.grad[..., 20, 22:34].abs().min() > 0
    assert x.grad[..., :, 0].abs().max() == 0


def test_match_pil_gradient_follows_the_float_resize():
    # Straight-through: the backward pass is Pillow's linear resampling (Keys a = -0.5, widened
    # when downscaling), which torch's antialiased bicubic also uses: on a smooth image, where
    # nothing clips, the gradients nearly agree (the float path resamples in one 2-D pass).
    x = smooth_image(320, 512)[None].requires_grad_(True)
    w = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    (pil,) = torch.autograd.grad((preprocess_images(x, 224, OPENAI_MEAN, OPENAI_STD, match_pil=True) * w).sum(), x)
    (flt,) = torch.autograd.grad((preprocess_images(x, 224, OPENAI_MEAN, OPENAI_STD) * w).sum(), x)
    cos = torch.nn.functional.cosine_similarity(pil.flatten(), flt.flatten(), dim=0)
    assert cos > 0.99, cos  # measured 1.0000 (max |difference| 1.7e-4 of 7.2)


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
