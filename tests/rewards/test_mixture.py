"""rewards.mixture: frame plans, gathering the decoded frames, and the weighted loss."""

import pytest
import torch
from torch import nn

from rewards.base import RewardInputError, check_video
from rewards.mixture import MixedReward, MixtureOutput, RewardTerm, build_mixture


class MeanPixelReward(nn.Module):
    """Fake reward: score = mean pixel of the video; records the frames it was given."""

    def __init__(self, kind: str, name: str = "fake") -> None:
        super().__init__()
        self.kind, self.name = kind, name
        self.seen: list[torch.Tensor] = []

    def forward(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_video(video, prompts, who=f"reward '{self.name}'")
        self.seen.append(video.detach().clone())
        return video.mean(dim=(1, 2, 3, 4))


def indexed_video(batch: int = 2, total: int = 16, h: int = 4, w: int = 4) -> torch.Tensor:
    """B,T,3,H,W in [0, 1] where frame t of video b is the constant (2t + b) / 100."""
    t = torch.arange(total).view(1, total, 1, 1, 1)
    b = torch.arange(batch).view(batch, 1, 1, 1, 1)
    return ((2 * t + b) / 100).expand(batch, total, 3, h, w).float()


def frame_indices(frames: torch.Tensor) -> list[int]:
    """Invert indexed_video for the first video of a batch: which frames are these?"""
    return (frames[0, :, 0, 0, 0] * 50).round().long().tolist()


def mixture(image_frames=3, video_frames=4, stride=None, w_img=2.0, w_vid=0.5) -> MixedReward:
    return MixedReward(
        [
            RewardTerm("img", MeanPixelReward("image"), w_img, image_frames),
            RewardTerm("vid", MeanPixelReward("video"), w_vid, video_frames, stride),
        ]
    )


def test_plan_image_frames_are_distinct_sorted_in_range():
    mix = mixture(image_frames=5)
    for seed in range(50):
        idx = mix.plan(16, torch.Generator().manual_seed(seed))["img"]
        assert idx.dtype == torch.long and len(idx) == 5
        assert idx.unique().numel() == 5 and torch.equal(idx, idx.sort().values)
        assert 0 <= idx.min() and idx.max() < 16


def test_plan_image_frames_cover_every_frame():
    mix = mixture(image_frames=2)
    counts = torch.zeros(8)
    for seed in range(400):
        counts[mix.plan(8, torch.Generator().manual_seed(seed))["img"]] += 1
    # Uniform: each frame chosen with probability 2/8 -> 100 of 400 times (std ~8.7).
    assert counts.min() > 65 and counts.max() < 135, counts


def test_plan_video_default_stride_and_every_start():
    mix = mixture(video_frames=4)  # 16 frames // 4 -> stride 4, starts 0..3
    starts = set()
    for seed in range(200):
        idx = mix.plan(16, torch.Generator().manual_seed(seed))["vid"]
        assert torch.equal(idx - idx[0], torch.tensor([0, 4, 8, 12]))
        starts.add(int(idx[0]))
    assert starts == {0, 1, 2, 3}


def test_plan_video_explicit_stride_covers_every_valid_start():
    mix = mixture(video_frames=4, stride=3)  # span 10 of 16 frames -> starts 0..6
    starts = set()
    for seed in range(300):
        idx = mix.plan(16, torch.Generator().manual_seed(seed))["vid"]
        assert torch.equal(idx - idx[0], torch.tensor([0, 3, 6, 9])) and idx[-1] <= 15
        starts.add(int(idx[0]))
    assert starts == set(range(7))


def test_plan_is_reproducible_per_generator():
    mix = mixture()
    a = mix.plan(16, torch.Generator().manual_seed(3))
    b = mix.plan(16, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plan_too_few_frames():
    with pytest.raises(RewardInputError, match=r"'img'.*needs 5 distinct frames.*has 4"):
        mixture(image_frames=5, video_frames=1).plan(4, torch.Generator())
    with pytest.raises(RewardInputError, match=r"'vid'.*needs 4 frames at stride 3 \(a span of 10 frames\).*has 9"):
        mixture(image_frames=1, stride=3).plan(9, torch.Generator())
    with pytest.raises(RewardInputError, match=r"'vid'.*needs 8 frames at stride 1.*has 7"):
        mixture(image_frames=1, video_frames=8).plan(7, torch.Generator())
    mixture(image_frames=1, stride=3).plan(10, torch.Generator())  # exactly enough


def test_needed_is_sorted_union():
    plan = {"a": torch.tensor([1, 5, 9]), "b": torch.tensor([0, 5, 10, 15])}
    assert MixedReward.needed(plan).tolist() == [0, 1, 5, 9, 10, 15]
    assert MixedReward.needed({}).tolist() == []


def test_forward_gathers_each_terms_frames_and_weights_the_loss():
    mix = mixture(image_frames=3, video_frames=4, stride=2, w_img=2.0, w_vid=0.5)
    full = indexed_video()
    plan = mix.plan(16, torch.Generator().manual_seed(11))
    ids = mix.needed(plan)
    frames = full[:, ids].clone().requires_grad_(True)  # only the decoded frames
    out = mix(frames, ids, plan, ["p0", "p1"])

    assert isinstance(out, MixtureOutput)
    img_model, vid_model = mix.models["img"], mix.models["vid"]
    assert frame_indices(img_model.seen[0]) == plan["img"].tolist()
    assert frame_indices(vid_model.seen[0]) == plan["vid"].tolist()
    torch.testing.assert_close(vid_model.seen[0], full[:, plan["vid"]])

    # Closed form: score_b = mean over the term's frames of (2t + b) / 100.
    expected = {
        name: torch.stack([(2 * plan[name].float() + b).mean() / 100 for b in range(2)]) for name in ("img", "vid")
    }
    for name in expected:
        torch.testing.assert_close(out.scores[name], expected[name])
        assert not out.scores[name].requires_grad
    torch.testing.assert_close(out.terms["img"], -2.0 * expected["img"].mean())
    torch.testing.assert_close(out.terms["vid"], -0.5 * expected["vid"].mean())
    torch.testing.assert_close(out.loss, -(2.0 * expected["img"].mean() + 0.5 * expected["vid"].mean()))

    out.loss.backward()  # gradient reaches exactly the decoded frames some term scored
    used = frames.grad.flatten(2).abs().amax(-1)[0] > 0
    assert used.all()


def test_forward_with_extra_decoded_frames():
    # Decoding more frames than planned is fine: each term still gets exactly its own.
    mix = mixture(image_frames=2, video_frames=2, stride=5)
    plan = {"img": torch.tensor([3, 7]), "vid": torch.tensor([4, 9])}
    ids = torch.arange(12)
    out = mix(indexed_video(total=16)[:, ids], ids, plan, ["a", "b"])
    assert frame_indices(mix.models["img"].seen[0]) == [3, 7]
    torch.testing.assert_close(out.scores["vid"], torch.tensor([0.13, 0.14]))


def test_forward_errors():
    mix = mixture(image_frames=2, video_frames=2)
    plan = {"img": torch.tensor([1, 6]), "vid": torch.tensor([0, 8])}
    ids = torch.tensor([0, 1, 8])  # frame 6 was not decoded
    with pytest.raises(RewardInputError, match=r"'img'.*needs frames \[1, 6\].*decoded are \[0, 1, 8\]"):
        mix(indexed_video()[:, ids], ids, plan, ["a", "b"])
    with pytest.raises(RewardInputError, match="K=3"):
        mix(indexed_video()[:, :2], ids, plan, ["a", "b"])
    with pytest.raises(RewardInputError, match="missing from the plan"):
        mix(indexed_video()[:, ids], ids, {"img": torch.tensor([0, 1])}, ["a", "b"])


def test_empty_mixture_is_no_reward():
    mix = MixedReward([])
    assert len(mix) == 0
    plan = mix.plan(16, torch.Generator())
    out = mix(torch.zeros(2, 0, 3, 4, 4), mix.needed(plan), plan, ["a", "b"])
    assert out.loss.item() == 0 and out.terms == {} and out.scores == {}


def test_constructor_validation():
    fake = MeanPixelReward("image")
    with pytest.raises(ValueError, match="unique"):
        MixedReward([RewardTerm("a", fake, 1.0, 1), RewardTerm("a", MeanPixelReward("image"), 1.0, 1)])
    with pytest.raises(ValueError, match="finite"):
        MixedReward([RewardTerm("a", fake, float("nan"), 1)])
    with pytest.raises(ValueError, match="stride"):
        MixedReward([RewardTerm("a", fake, 1.0, 2, stride=2)])
    mix = MixedReward([RewardTerm("a", fake, 1.0, 1)])
    assert list(mix.models) == ["a"] and mix.models["a"] is fake  # registered: moves with .to()


def test_build_mixture_from_plain_dicts():
    img, vid = MeanPixelReward("image"), MeanPixelReward("video")
    mix = build_mixture(
        clip={"model": img, "weight": 1.5, "frames": 2},
        viclip={"model": vid, "weight": 0.5, "frames": 8, "stride": 2},
    )
    assert [(t.name, t.weight, t.num_frames, t.stride) for t in mix.terms] == [
        ("clip", 1.5, 2, None),
        ("viclip", 0.5, 8, 2),
    ]
    assert len(build_mixture()) == 0
    with pytest.raises(ValueError, match=r"reward.clip.*found \['frames', 'model', 'weight', 'wieght'\]"):
        build_mixture(clip={"model": img, "weight": 1.0, "frames": 2, "wieght": 2.0})


def test_build_mixture_through_hydra_instantiate():
    hydra_utils = pytest.importorskip("hydra.utils")
    cfg = {
        "_target_": "rewards.mixture.build_mixture",
        "clip": {
            "model": {"_target_": "rewards.clip.tiny_clip_reward", "seed": 0},
            "weight": 1.0,
            "frames": 2,
            "stride": None,
        },
    }
    mix = hydra_utils.instantiate(cfg)
    assert len(mix) == 1 and mix.terms[0].model.kind == "image"
    plan = mix.plan(4, torch.Generator().manual_seed(0))
    ids = mix.needed(plan)
    out = mix(torch.rand(1, len(ids), 3, 32, 32), ids, plan, ["a red image"])
    assert out.loss.isfinite() and out.scores["clip"].shape == (1,)
