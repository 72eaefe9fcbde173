"""Datasets: toy clips, folders of captioned mp4s, prompt lists, and batching."""

import json

import pytest
import torch

from distill.data import PromptDataset, ToyVideoDataset, VideoFolderDataset, collate
from turbo.video import resize_cover_crop
from turbo.toy.world import ToyWorld, parse_caption
from turbo.video import VideoReadError, write_video


def test_toy_dataset_train_split_never_shows_a_heldout_prompt():
    from turbo.toy.split import split_specs

    _, held_out = split_specs()
    data = ToyVideoDataset(size=400, num_frames=1, height=8, width=8)
    prompts = {data[i]["prompt"] for i in range(len(data))}
    assert not prompts & {s.caption() for s in held_out}
    assert len(prompts) > 80  # most of the 96 training scenes appear
    with pytest.raises(ValueError, match="data.max_objects"):
        ToyVideoDataset(size=4, num_frames=1, height=8, width=8, max_objects=2)


def test_toy_dataset_items_are_world_samples():
    data = ToyVideoDataset(size=6, num_frames=8, height=24, width=40, max_objects=2, seed=5, split="all")
    assert len(data) == 6 and ToyVideoDataset.has_videos
    item = data[3]
    assert set(item) == {"prompt", "video"}
    assert item["video"].shape == (8, 3, 24, 40) and item["video"].dtype == torch.float32
    assert 0.0 <= item["video"].min() and item["video"].max() <= 1.0
    parse_caption(item["prompt"])  # a caption of the grammar
    prompt, video = ToyWorld(num_frames=8, height=24, width=40, max_objects=2, seed=5).sample(3)
    assert item["prompt"] == prompt and torch.equal(item["video"], video)
    assert torch.equal(data[3]["video"], item["video"])  # same every epoch
    assert not torch.equal(data[4]["video"], item["video"])
    with pytest.raises(IndexError):
        data[6]
    assert len(list(data)) == 6  # plain iteration stops at the end


def _grey_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """Frame i is uniform grey 0.1 + 0.05 i, except red bands 3 px wide at the left and right edges."""
    levels = 0.1 + 0.05 * torch.arange(frames, dtype=torch.float32)
    video = levels.view(frames, 1, 1, 1).expand(frames, 3, height, width).clone()
    for band in (slice(0, 3), slice(width - 3, width)):
        video[:, :, :, band] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return video


def _folder(tmp_path, lines: list) -> None:
    """Write metadata.jsonl: dicts as JSON, strings verbatim (for blank or broken lines)."""
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (tmp_path / "metadata.jsonl").write_text(text + "\n")


def test_video_folder_reads_captions_first_frames_and_crops(tmp_path):
    write_video(tmp_path / "clips" / "a.mp4", _grey_clip(10, 48, 64))
    write_video(tmp_path / "b.mp4", _grey_clip(12, 64, 48))
    _folder(tmp_path, [{"video": "clips/a.mp4", "caption": "a grey clip"}, "", {"video": "b.mp4", "caption": "tall"}])
    data = VideoFolderDataset(tmp_path, num_frames=8, height=32, width=32)
    assert len(data) == 2 and VideoFolderDataset.has_videos
    item = data[0]
    assert item["prompt"] == "a grey clip"
    video = item["video"]
    assert video.shape == (8, 3, 32, 32) and video.dtype == torch.float32
    assert 0.0 <= video.min() and video.max() <= 1.0
    # First 8 frames, in order: frame i keeps its grey level (H.264 error measured < 0.01).
    expected = 0.1 + 0.05 * torch.arange(8)
    assert torch.allclose(video[:, 1].mean(dim=(1, 2)), expected, atol=0.02)
    # 48x64 -> 32x43 -> centre 32 columns: the red edge bands (2 px after scaling) are cropped away.
    assert (video[:, 0] - video[:, 1]).abs().max() < 0.1
    tall = data[1]["video"]  # 64x48 -> 43x32: nothing cropped sideways, the bands stay
    assert tall.shape == (8, 3, 32, 32)
    assert (tall[:, 0, :, 0] - tall[:, 1, :, 0]).mean() > 0.5


def test_video_folder_rejects_short_videos(tmp_path):
    write_video(tmp_path / "short.mp4", _grey_clip(4, 32, 32))
    _folder(tmp_path, [{"video": "short.mp4", "caption": "short"}])
    data = VideoFolderDataset(tmp_path, num_frames=8, height=32, width=32)
    with pytest.raises(ValueError, match=r"short\.mp4.*at least 8 frames.*found 4"):
        data[0]


def test_video_folder_non_video_raises_naming_it(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    _folder(tmp_path, [{"video": "notes.mp4", "caption": "oops"}])
    data = VideoFolderDataset(tmp_path, num_frames=2, height=16, width=16)
    with pytest.raises(VideoReadError) as error:
        data[0]
    assert str(tmp_path / "notes.mp4") in str(error.value)


def test_video_folder_construction_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root"):
        VideoFolderDataset(tmp_path / "nowhere", num_frames=2, height=16, width=16)
    with pytest.raises(FileNotFoundError, match="data.root") as error:
        VideoFolderDataset(tmp_path, num_frames=2, height=16, width=16)
    assert str(tmp_path / "metadata.jsonl") in str(error.value)

    write_video(tmp_path / "ok.mp4", _grey_clip(2, 16, 16))
    listed = [
        {"video": "ok.mp4", "caption": "fine"},
        {"video": "gone.mp4", "caption": "x"},
        {"video": "also_gone.mp4", "caption": "y"},
    ]
    _folder(tmp_path, listed)
    with pytest.raises(FileNotFoundError, match=r"metadata\.jsonl:2.*gone\.mp4"):
        VideoFolderDataset(tmp_path, num_frames=2, height=16, width=16)

    _folder(tmp_path, [{"video": "ok.mp4", "caption": "fine"}, {"video": "ok.mp4", "text": "wrong key"}])
    with pytest.raises(ValueError, match=r"metadata\.jsonl:2: expected keys 'video' and 'caption'"):
        VideoFolderDataset(tmp_path, num_frames=2, height=16, width=16)

    _folder(tmp_path, ["{not json"])
    with pytest.raises(ValueError, match=r"metadata\.jsonl:1.*invalid JSON"):
        VideoFolderDataset(tmp_path, num_frames=2, height=16, width=16)


def test_resize_center_crop_closed_forms():
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(2, 3, 4, 8)
    # Same scale (height fits): the centre 4 columns are cut out unchanged.
    assert torch.equal(resize_cover_crop(ramp, 4, 4), ramp[..., 2:6])
    constant = torch.full((2, 3, 10, 30), 0.25)
    out = resize_cover_crop(constant, 16, 16)  # upscale 10 -> 16, width 48 -> crop 16
    assert out.shape == (2, 3, 16, 16) and torch.allclose(out, torch.full_like(out, 0.25))


def test_prompt_dataset(tmp_path):
    data = PromptDataset(prompts=["a red circle moving left", "a cat"])
    assert not PromptDataset.has_videos
    assert len(data) == 2 and data[1] == {"prompt": "a cat"}
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt\n\n  second prompt  \n")
    assert [item["prompt"] for item in PromptDataset(prompt_file=path)] == ["first prompt", "second prompt"]

    with pytest.raises(ValueError, match="data.prompts.*at least one"):
        PromptDataset(prompts=[])
    with pytest.raises(FileNotFoundError, match="data.prompt_file") as error:
        PromptDataset(prompt_file=tmp_path / "missing.txt")
    assert "missing.txt" in str(error.value)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="blank.txt.*at least one"):
        PromptDataset(prompt_file=tmp_path / "blank.txt")
    with pytest.raises(ValueError, match="exactly one"):
        PromptDataset()


def test_collate_batches_prompts_and_videos():
    data = ToyVideoDataset(size=3, num_frames=4, height=16, width=16)
    batch = collate([data[0], data[1], data[2]])
    assert batch["prompt"] == [data[i]["prompt"] for i in range(3)]
    assert batch["video"].shape == (3, 4, 3, 16, 16)
    assert torch.equal(batch["video"][1], data[1]["video"])

    prompts = collate([{"prompt": "a"}, {"prompt": "b"}])
    assert prompts == {"prompt": ["a", "b"]}
    with pytest.raises(ValueError, match="all items or none"):
        collate([data[0], {"prompt": "b"}])
    with pytest.raises(ValueError, match="one shape"):
        collate([data[0], ToyVideoDataset(size=1, num_frames=4, height=16, width=24)[0]])
