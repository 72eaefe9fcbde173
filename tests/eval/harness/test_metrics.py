"""eval.harness.metrics: VBench's temporal flickering by hand, CLIPScore through open_clip's own
encoders, turbo's rewards per video, the Fréchet distance in closed forms, the I3D under the
piergiaj names, and ToyBench's per-video scores."""

import json
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from eval.harness.i3d import InceptionI3d, load_i3d
from eval.harness.metrics import (
    FVD, ClipScore, RewardScores, TemporalFlickering, VideoMetric, frechet_distance, fvd, i3d_clips, middle_frames,
    temporal_flickering,
)
from eval.toybench import toybench_scores
from rewards.loading import CheckpointMismatchError
from rewards.toy import ToyDualEncoder, ToyImageText, ToyRewardConfig, ToyVideoText
from turbo.toy.split import split_specs
from turbo.toy.world import COLOURS, ToyWorld, parse_caption

ARCH = "TurboTest-CLIP-metrics"  # registered here; the same tiny numbers as tests/conftest.py's TurboTest-CLIP


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- temporal flickering

def test_a_still_video_scores_exactly_one_and_full_black_white_alternation_zero():
    still = torch.rand(1, 3, 16, 16).expand(8, -1, -1, -1)
    assert temporal_flickering(still) == 1.0
    flicker = torch.zeros(16, 3, 64, 64)
    flicker[1::2] = 1.0
    assert temporal_flickering(flicker) == 0.0  # (255 - 255) / 255


def test_temporal_flickering_by_hand_quantised_then_mean_over_pixels_then_over_pairs():
    f0 = torch.zeros(3, 1, 2)
    f1 = torch.tensor([[[1.0, 0.0]], [[0.199, 0.199]], [[0.0, 0.0]]])  # levels 255, 0 | 51 (50.745), 51 | 0, 0
    f2 = torch.ones(3, 1, 2)
    # pair 1: |diffs| 255 + 51 + 51 = 357 over 6 values = 59.5; (255 - 59.5) / 255
    assert temporal_flickering(torch.stack([f0, f1])) == pytest.approx(195.5 / 255, abs=1e-12)
    # pair 2: 0 + 255 + 204 + 204 + 255 + 255 = 1173 / 6 = 195.5; mean of pairs 127.5 -> 0.5
    assert temporal_flickering(torch.stack([f0, f1, f2])) == pytest.approx(0.5, abs=1e-12)


def test_a_moving_square_flickers_little_and_the_metric_checks_its_input():
    # EVAL.md measured VBench on an H.264 64x64 16-frame moving square: 0.99385 (a loose check only).
    video = torch.zeros(16, 3, 64, 64)
    for t in range(16):
        video[t, :, 24:40, 2 * t : 2 * t + 16] = 1.0
    assert 0.98 < temporal_flickering(video) < 1.0
    metric = TemporalFlickering()
    assert isinstance(metric, VideoMetric) and metric.score([video, video[:5]], ["a", "b"]) == [
        temporal_flickering(video), temporal_flickering(video[:5])]
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_flickering(video[:1])
    with pytest.raises(ValueError, match=r"video 0 must be finite and in \[0, 1\].*\(x \+ 1\) / 2"):
        metric.score([video * 2 - 1], ["a"])


# ---------------------------------------------------------------- CLIPScore

@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A tiny open_clip architecture registered by name and its random state dict saved as a .pt
    (the pattern of tests/conftest.py's fake_checkpoints)."""
    root = tmp_path_factory.mktemp("clip")
    (root / f"{ARCH}.json").write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(root / f"{ARCH}.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(ARCH).state_dict(), root / "clip.pt")
    return root / "clip.pt"


def _videos(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 3, 40, 48, generator=g), torch.rand(5, 3, 32, 32, generator=g)]


def test_clip_score_is_100_times_clamped_cosine_averaged_over_frames_through_open_clips_encoders(clip_file):
    metric = ClipScore(ARCH, clip_file)
    evalcrafter = ClipScore(ARCH, clip_file, convention="evalcrafter", batch_size=2)
    reference = open_clip.create_model(ARCH)
    reference.load_state_dict(torch.load(clip_file, weights_only=True))
    reference.eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    videos, prompts = _videos(), ["a red circle", "a blue square moving left"]
    expected_clip, expected_ec = [], []
    with torch.no_grad():
        for video, prompt in zip(videos, prompts):
            image = F.normalize(reference.encode_image(metric.preprocess(video)), dim=-1)
            text = F.normalize(reference.encode_text(tokenizer([prompt])), dim=-1)[0]
            cos = (image @ text).double()
            expected_clip.append((100 * cos.clamp(min=0)).mean().item())
            expected_ec.append(cos.mean().item())
    assert metric.score(videos, prompts) == pytest.approx(expected_clip, abs=1e-4)
    assert evalcrafter.score(videos, prompts) == pytest.approx(expected_ec, abs=1e-6)
    batched = torch.stack([videos[1], videos[1].flip(0)])  # one B,F,3,H,W tensor works too
    assert len(metric.score(batched, prompts)) == 2


def test_clip_score_clamps_negative_cosines_per_frame_and_evalcrafter_keeps_them(clip_file, tmp_path):
    state = torch.load(clip_file, weights_only=True)
    state["text_projection"] = -state["text_projection"]  # every cosine changes sign
    torch.save(state, tmp_path / "negated.pt")
    videos, prompts = _videos(), ["a red circle", "a blue square moving left"]
    positive = ClipScore(ARCH, clip_file, convention="evalcrafter").score(videos, prompts)
    assert min(positive) > 0  # measured 0.47, 0.38 with these random weights
    assert ClipScore(ARCH, tmp_path / "negated.pt").score(videos, prompts) == [0.0, 0.0]
    negated = ClipScore(ARCH, tmp_path / "negated.pt", convention="evalcrafter").score(videos, prompts)
    assert negated == pytest.approx([-p for p in positive], abs=1e-6)


def test_clip_preprocessing_matches_open_clips_own_transform_on_8_bit_frames(clip_file):
    from PIL import Image

    metric = ClipScore(ARCH, clip_file)
    _, _, preprocess = open_clip.create_model_and_transforms(ARCH)
    assert (metric.size, metric.mean, metric.std) == (32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    smooth = F.interpolate(torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(1)), size=(48, 64),
                           mode="bilinear", align_corners=False)
    ours = metric.preprocess(smooth)[0]
    levels = (smooth[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    theirs = preprocess(Image.fromarray(levels))
    # torchvision's uint8 bicubic vs Pillow's: about one level (1/255 / std ~ 0.015) at most
    assert (ours - theirs).abs().max() < 0.05 and (ours - theirs).abs().mean() < 0.01


def test_clip_score_errors_name_the_file_and_the_option(clip_file, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as err:
        ClipScore(ARCH, missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3)}, other)
    with pytest.raises(CheckpointMismatchError, match="other.pt") as err:
        ClipScore(ARCH, other)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="convention"):
        ClipScore(ARCH, clip_file, convention="vbench")
    with pytest.raises(ValueError, match="one prompt per video"):
        ClipScore(ARCH, clip_file).score(_videos(), ["only one"])


# ---------------------------------------------------------------- rewards

def _toy_reward(cls, seed: int):
    torch.manual_seed(seed)
    return cls(ToyDualEncoder(ToyRewardConfig.for_kind(cls.kind)))


class RecordingVideoReward(torch.nn.Module):
    """A video reward with a fixed frame count (as ViCLIP's): scores the mean pixel, records the frames."""

    name, kind, num_frames = "recorder", "video", 8

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, video, prompts):
        assert video.shape[1] == self.num_frames
        self.seen.append(video)
        return video.mean(dim=(1, 2, 3, 4))


def test_reward_scores_are_each_rewards_own_score_of_each_video():
    image, video_reward = _toy_reward(ToyImageText, 0), _toy_reward(ToyVideoText, 1)
    world = ToyWorld(num_frames=9)
    prompts = [spec.caption() for spec in split_specs()[1][:2]]
    videos = [world.render(parse_caption(p), torch.Generator().manual_seed(i)) for i, p in enumerate(prompts)]
    videos[1] = videos[1][:6]  # videos of different lengths
    scores = RewardScores({"img": image, "vid": video_reward}).score(videos, prompts)
    assert list(scores) == ["img", "vid"]
    with torch.no_grad():
        for name, model in (("img", image), ("vid", video_reward)):
            expected = [model(v[None], [p]).item() for v, p in zip(videos, prompts)]
            assert scores[name] == pytest.approx(expected, abs=1e-6)
    assert scores["img"] != scores["vid"]


def test_video_rewards_with_a_frame_count_see_the_middle_frame_of_each_segment():
    assert middle_frames(10, 8).tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    assert middle_frames(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert middle_frames(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    reward = RecordingVideoReward()
    video = torch.arange(10.0).div(9).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    (score,) = RewardScores({"rec": reward}).score([video], ["x"])["rec"]
    assert reward.seen[0][0, :, 0, 0, 0].mul(9).round().tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    assert score == pytest.approx(36 / 8 / 9)
    with pytest.raises(ValueError, match="unknown rewards"):
        RewardScores({"rec": reward}, num_frames={"clip": 4})
    with pytest.raises(TypeError, match="RewardModel"):
        RewardScores({"bad": torch.nn.Linear(2, 2)})


# ---------------------------------------------------------------- Fréchet distance

def test_frechet_distance_of_identical_gaussians_is_zero_and_1d_closed_form():
    g = np.random.default_rng(0)
    a = g.normal(size=(50, 6))
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    m1, s1, m2, s2 = 0.3, 2.0, -1.2, 0.5
    expected = (m1 - m2) ** 2 + s1 + s2 - 2 * math.sqrt(s1 * s2)
    assert frechet_distance([m1], [[s1]], [m2], [[s2]]) == pytest.approx(expected, abs=1e-12)


def test_frechet_distance_diagonal_and_full_covariances():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, abs=1e-10)
    g = np.random.default_rng(1)
    a, b = g.normal(size=(40, 5)), g.normal(size=(30, 5)) @ g.normal(size=(5, 5))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()  # tr sqrtm(S1 S2), another route
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    assert fvd(a, b) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        fvd(a[:1], b)


# ---------------------------------------------------------------- I3D and FVD

@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(InceptionI3d().state_dict(), path)
    return path


def test_i3d_has_piergiajs_names_and_loads_a_state_dict_round_trip(i3d_file, tmp_path):
    keys = set(InceptionI3d().state_dict())
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.running_var", "Mixed_3b.b1b.conv3d.weight",
                "Mixed_5c.b3b.conv3d.weight", "Mixed_5c.b3b.bn.bias", "logits.conv3d.weight", "logits.conv3d.bias"):
        assert key in keys
    assert not any(k.startswith("MaxPool") or k.startswith("Conv3d_1a_7x7.conv3d.bias") for k in keys)
    saved = torch.load(i3d_file, weights_only=True)
    loaded = load_i3d(i3d_file).state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    old = tmp_path / "rgb_imagenet.pt"  # saved before torch 0.4.1: no num_batches_tracked
    torch.save({k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}, old)
    assert torch.equal(load_i3d(old).state_dict()["logits.conv3d.weight"], saved["logits.conv3d.weight"])
    torch.save({k: v for k, v in saved.items() if k != "Mixed_4b.b0.conv3d.weight"}, old)
    with pytest.raises(CheckpointMismatchError, match=r"rgb_imagenet.pt.*fvd\.i3d.*Mixed_4b\.b0\.conv3d\.weight"):
        load_i3d(old, key="fvd.i3d")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        FVD(tmp_path / "nothing.pt")


def test_i3d_clips_loop_short_videos_and_scale_to_minus_one_one():
    video = torch.arange(5.0).div(4).view(5, 1, 1, 1).expand(5, 3, 8, 12)
    (clip,) = i3d_clips([video])
    assert clip.shape == (3, 16, 224, 224)
    assert clip[0, :, 100, 100].tolist() == pytest.approx([((i % 5) / 4) * 2 - 1 for i in range(16)], abs=1e-6)


def test_i3d_logits_shape_and_fvd_of_a_set_against_itself(i3d_file):
    metric = FVD(i3d_file)
    with torch.inference_mode():
        assert metric.model(torch.rand(1, 3, 16, 224, 224) * 2 - 1).shape == (1, 400)
    g = torch.Generator().manual_seed(0)
    videos = [torch.rand(16, 3, 64, 64, generator=g), torch.rand(12, 3, 48, 64, generator=g)]
    feats = metric.features(videos)
    assert feats.shape == (2, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert fvd(feats, feats) < 1e-6
    assert fvd(feats, feats + 1.0) == pytest.approx(400.0, rel=1e-6)  # a mean shift of 1 in each of 400 dims


# ---------------------------------------------------------------- ToyBench

def test_toybench_scores_a_clean_render_high_on_colour_and_noise_or_a_wrong_caption_low():
    world = ToyWorld()
    spec = split_specs()[1][0]
    prompt, colour = spec.caption(), spec.objects[0].colour
    other = next(c for c in COLOURS if c != colour)
    wrong = " ".join(other if word == colour else word for word in prompt.split())
    clean = world.render(spec, torch.Generator().manual_seed(0))
    noise = torch.rand(clean.shape, generator=torch.Generator().manual_seed(1))
    good, bad, mislabelled = toybench_scores([clean, noise, clean], [prompt, prompt, wrong])
    assert good["colour"] > 0.9 and good["shape"] == 1.0 and good["count"] == 1.0
    assert bad["colour"] < 0.1 and bad["temporal_flickering"] < good["temporal_flickering"]
    assert mislabelled["colour"] == 0.0 and mislabelled["temporal_flickering"] == good["temporal_flickering"]
    assert "distribution" not in good  # a set-level score
