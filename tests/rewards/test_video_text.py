"""rewards.video_text: frame preprocessing parity with the InternVid / InternVideo2 test transforms."""

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from rewards.video_text import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames
from tests.rewards.test_base import edge_image, smooth_image

HALF_UINT8_LEVEL = 0.5 / 255 / min(IMAGENET_STD)  # 0.00876 in normalised units
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def official_transform(size: int, antialias: bool = False, interpolation=InterpolationMode.BICUBIC) -> T.Compose:
    """get_test_transform of InternVideo2/multi_modality/dataset/__init__.py (and InternVid's ViCLIP
    datasets), which runs on uint8 T,3,H,W tensors; torchvision 0.14 (their pinned version) did
    not antialias tensors, hence antialias=False."""
    return T.Compose([
        T.Resize((size, size), interpolation=interpolation, antialias=antialias),
        T.Lambda(lambda x: x.float().div(255.0)),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def as_uint8(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u8 = (img * 255).round().to(torch.uint8)
    return u8.float() / 255, u8


@pytest.mark.parametrize("hw,size", [((240, 320), 224), ((320, 512), 224), ((40, 48), 32), ((20, 27), 32), ((32, 32), 32)])
@pytest.mark.parametrize("antialias", [False, True])
def test_equals_torchvision_on_float_frames(hw, size, antialias):
    # Same frames, float: the reference transform's resize + normalise, without the uint8 round trip.
    x = torch.rand(8, 3, *hw, generator=torch.Generator().manual_seed(0))
    tv = T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=antialias),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ours = preprocess_frames(x, size, antialias=antialias, match_uint8=False)
    assert ours.shape == (8, 3, size, size) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, tv(x), atol=1e-5, rtol=0)  # measured: 0.0 (same kernels)


@pytest.mark.parametrize("hw,size", [((240, 320), 224), ((320, 512), 224), ((480, 854), 224), ((40, 48), 32), ((20, 27), 32), ((32, 32), 32)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("antialias", [False, True])
def test_equals_official_uint8_pipeline(hw, size, interpolation, antialias):
    # The reference feeds uint8 frames: its resize runs in float32 on 0..255 values, clamps and
    # rounds to uint8. match_uint8 (default) does the same on round(255 * frames).
    official = official_transform(size, antialias, INTERPOLATIONS[interpolation])
    noise = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    for img in (torch.stack([smooth_image(*hw, seed=i) for i in range(3)]), edge_image(*hw)[None], noise):
        x, u8 = as_uint8(img)
        ours = preprocess_frames(x, size, interpolation=interpolation, antialias=antialias)
        # Measured: 0.0 (bit-exact). Before the uint8 roundings were reproduced (float resize,
        # clamped): max 0.0088 (smooth), 0.0043-0.0084 (hard edges), half a uint8 level.
        torch.testing.assert_close(ours, official(u8), atol=1e-6, rtol=0)


def test_float_path_misses_uint8_saturation_at_hard_edges():
    x, u8 = as_uint8(edge_image(240, 320))
    official = official_transform(224)(u8[None])
    unmatched = (preprocess_frames(x[None], 224, match_uint8=False) - official).abs().max()
    matched = (preprocess_frames(x[None], 224) - official).abs().max()
    assert unmatched > 0.5 and matched == 0  # measured 0.98 vs 0.0


def test_match_uint8_gradients_are_straight_through():
    # Backward: the float resize's gradient (roundings straight through), zero where it clamps.
    x = torch.stack([smooth_image(40, 48, seed=i) for i in range(2)]).requires_grad_(True)
    w = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (matched,) = torch.autograd.grad((preprocess_frames(x, 32) * w).sum(), x)
    (plain,) = torch.autograd.grad((preprocess_frames(x, 32, match_uint8=False) * w).sum(), x)
    torch.testing.assert_close(matched, plain, atol=1e-4, rtol=1e-4)  # nothing clamps on a smooth image
    assert (matched != 0).float().mean() > 0.5
    edge = edge_image(40, 48)[None].requires_grad_(True)
    preprocess_frames(edge, 32).sum().backward()
    assert edge.grad.abs().sum() > 0


def test_bilinear_without_antialias_is_the_demo_resize():
    # The InternVid demo resizes with cv2.resize(INTER_LINEAR): bilinear, half-pixel centres, no antialias.
    # (cv2 is not installed here: checked against torchvision's identical kernel.)
    x = torch.rand(8, 3, 240, 320, generator=torch.Generator().manual_seed(1))
    tv = T.Compose([T.Resize((224, 224), interpolation=InterpolationMode.BILINEAR, antialias=False),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ours = preprocess_frames(x, 224, interpolation="bilinear", match_uint8=False)
    torch.testing.assert_close(ours, tv(x), atol=1e-5, rtol=0)


def test_imagenet_normalisation_closed_form():
    grey = torch.full((1, 3, 7, 9), 0.5)  # the uint8 frame holds round(127.5) = 128
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(preprocess_frames(grey, 4)[0, :, 2, 2], expected, atol=1e-6, rtol=0)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(preprocess_frames(grey, 4, match_uint8=False)[0, :, 2, 2], expected, atol=1e-6, rtol=0)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="N,3,H,W"):
        preprocess_frames(torch.rand(2, 8, 3, 8, 8), 4)
    with pytest.raises(ValueError, match="interpolation"):
        preprocess_frames(torch.rand(2, 3, 8, 8), 4, interpolation="nearest")
