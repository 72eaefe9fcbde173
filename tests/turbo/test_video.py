"""Video I/O: round trips through H.264, streaming, atomic writes, errors that name the file."""

import numpy as np
import pytest
import torch

from turbo.video import VideoInfo, VideoReadError, VideoWriter, read_video, video_info, write_video


def _smooth_video(frames=16, height=32, width=48) -> torch.Tensor:
    """F,3,H,W in [0.1, 1]: slow gradients that drift over time (what H.264 compresses well)."""
    t = torch.linspace(0, 1, frames).view(frames, 1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, 1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, 1, width)
    shape = (frames, 1, height, width)
    red = (0.1 + 0.7 * x + 0.1 * t).expand(shape)
    green = (0.1 + 0.6 * y + 0.1 * t).expand(shape)
    blue = (0.2 + 0.3 * (x + y) + 0.2 * t).expand(shape)
    return torch.cat([red, green, blue], dim=1)


def test_round_trip_keeps_frames_size_fps_and_pixels(tmp_path):
    video = _smooth_video()
    path = write_video(tmp_path / "nested" / "dir" / "clip.mp4", video, fps=12)
    assert path.is_file()
    decoded, fps = read_video(path)
    assert decoded.shape == video.shape and decoded.dtype == torch.float32
    assert fps == 12.0
    assert 0.0 <= decoded.min() and decoded.max() <= 1.0
    # Measured 0.008 mean at crf 18; bound leaves ~2x headroom for other libx264 builds.
    assert (decoded - video).abs().mean() < 0.015
    assert video_info(path) == VideoInfo(frames=16, height=32, width=48, fps=12.0)


def test_round_trip_keeps_frame_order(tmp_path):
    # Per-frame grey levels 0.1 .. 0.85: a reordered or dropped frame moves a mean by >= 0.05.
    levels = torch.linspace(0.1, 0.85, 16)
    video = levels.view(16, 1, 1, 1).expand(16, 3, 16, 16).contiguous()
    decoded, _ = read_video(write_video(tmp_path / "grey.mp4", video))
    assert torch.allclose(decoded.mean(dim=(1, 2, 3)), levels, atol=0.01)


def test_read_first_num_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _smooth_video())
    full, _ = read_video(path)
    head, _ = read_video(path, num_frames=5)
    assert head.shape[0] == 5
    assert torch.equal(head, full[:5])
    longer, _ = read_video(path, num_frames=100)  # asking for more than there is returns what there is
    assert longer.shape[0] == 16


def test_odd_sizes_are_padded_to_even_by_edge_replication(tmp_path):
    video = _smooth_video(frames=4, height=33, width=35)
    decoded, _ = read_video(write_video(tmp_path / "odd.mp4", video))
    assert decoded.shape == (4, 3, 34, 36)
    assert (decoded[:, :, :33, :35] - video).abs().mean() < 0.015
    # The extra row/column repeat the last real one (not black).
    assert (decoded[:, :, 33, :35] - video[:, :, 32, :]).abs().mean() < 0.03
    assert (decoded[:, :, :33, 35] - video[:, :, :, 34]).abs().mean() < 0.03


def test_streaming_writer_appends_chunks_in_order(tmp_path):
    path = tmp_path / "stream.mp4"
    chunks, k = 3, 4
    with VideoWriter(path, fps=8) as writer:
        for i in range(chunks):
            # Alternate the two accepted layouts: float F,3,H,W and uint8 F,H,W,3.
            level = 0.2 + 0.3 * i
            if i % 2:
                writer.write(np.full((k, 16, 24, 3), round(level * 255), dtype=np.uint8))
            else:
                writer.write(torch.full((k, 3, 16, 24), level))
        assert writer.frames_written == chunks * k
        assert not path.exists()  # published only on close
    decoded, fps = read_video(path)
    assert decoded.shape == (chunks * k, 3, 16, 24) and fps == 8.0
    chunk_means = decoded.mean(dim=(1, 2, 3)).view(chunks, k).mean(dim=1)
    assert torch.allclose(chunk_means, torch.tensor([0.2, 0.5, 0.8]), atol=0.01)


def test_crash_inside_writer_leaves_no_file_and_no_temp(tmp_path):
    path = tmp_path / "out" / "crash.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path) as writer:
            writer.write(_smooth_video(frames=4))
            raise RuntimeError("boom")
    assert list(path.parent.iterdir()) == []


def test_crash_does_not_clobber_an_existing_video(tmp_path):
    path = write_video(tmp_path / "keep.mp4", _smooth_video(frames=3))
    with pytest.raises(RuntimeError):
        with VideoWriter(path) as writer:
            writer.write(_smooth_video(frames=8))
            raise RuntimeError("boom")
    assert video_info(path).frames == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_writer_rejects_bad_input_and_cleans_up(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4"):
            pass
    with pytest.raises(ValueError, match="16x16"):
        with VideoWriter(tmp_path / "mixed.mp4") as writer:
            writer.write(torch.zeros(2, 3, 16, 16))
            writer.write(torch.zeros(2, 3, 16, 18))
    with pytest.raises(ValueError, match="F,3,H,W"):
        write_video(tmp_path / "gray.mp4", torch.zeros(2, 1, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_text_file_named_mp4_is_not_a_video(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(VideoReadError, match="expected a video") as error:
        read_video(path)
    assert str(path) in str(error.value)
    with pytest.raises(VideoReadError, match="x.mp4"):
        video_info(path)


def test_still_image_is_not_a_video(tmp_path):
    from PIL import Image

    path = tmp_path / "frame.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    with pytest.raises(VideoReadError, match="still image") as error:
        read_video(path)
    assert str(path) in str(error.value)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "missing.mp4"
    with pytest.raises(VideoReadError) as error:
        read_video(path)
    assert str(path) in str(error.value) and "expected a video" in str(error.value)
