"""Video files in and out, through PyAV (FFmpeg).

A video tensor is ``F,3,H,W`` float32 in ``[0, 1]``. Files are H.264
(libx264, yuv420p) mp4s. The code here is only the glue PyAV needs: tensor
<-> rgb24 frames, even-size padding for yuv420p, atomic writes, and errors
that name the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import torch
from torch import Tensor

from turbo.atomic import umask_mode


def resize_cover_crop(frames: Tensor, height: int, width: int, mode: str = "bilinear") -> Tensor:
    """``...,3,H,W`` float frames in [0, 1] -> ``...,3,height,width``: resized (antialiased, aspect
    kept) so they cover the target, then centre-cropped, with torchvision's v2 functional ops. The
    one resize of turbo's inputs (training videos, I2V first frames, image-encoder inputs)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    # max(): rounding must never leave the resized side a pixel short of the crop
    size = [max(height, round(h * scale)), max(width, round(w * scale))]
    if size != [h, w]:
        frames = TF.resize(frames, size, interpolation=InterpolationMode(mode), antialias=True)
        frames = frames.clamp(0, 1)  # the antialias kernel can overshoot by a rounding error
    return TF.center_crop(frames, [height, width]).contiguous()

__all__ = ["VideoInfo", "VideoReadError", "VideoWriter", "read_video", "video_info", "write_video"]


class VideoReadError(ValueError):
    """A path that should hold a decodable video does not."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, read from its header (no decoding)."""

    frames: int
    height: int
    width: int
    fps: float


def _to_uint8_frames(frames: Tensor | np.ndarray) -> np.ndarray:
    """``F,3,H,W`` float in [0, 1] or ``F,H,W,3`` uint8 -> ``F,H,W,3`` uint8 (contiguous)."""
    if isinstance(frames, Tensor):
        if frames.dtype == torch.uint8:
            array = frames.detach().cpu().numpy()
        else:
            if frames.ndim != 4 or frames.shape[1] != 3:
                raise ValueError(f"expected float frames of shape F,3,H,W, found {tuple(frames.shape)}")
            # Round rather than truncate: truncation biases every pixel down by half a level.
            scaled = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
            array = scaled.permute(0, 2, 3, 1).cpu().numpy()
    else:
        array = np.asarray(frames)
        if array.dtype != np.uint8:
            raise ValueError(f"numpy frames must be uint8 F,H,W,3, found dtype {array.dtype}")
    if array.ndim != 4 or array.shape[3] != 3:
        raise ValueError(f"expected uint8 frames of shape F,H,W,3, found {array.shape}")
    return np.ascontiguousarray(array)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad ``F,H,W,3`` on the bottom/right by repeating the last row/column.

    yuv420p stores chroma at half resolution, so libx264 refuses odd sizes.
    Edge replication (rather than black) keeps the padded border from bleeding
    a dark fringe into the last real row/column through chroma subsampling.
    """
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h == 0 and pad_w == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class VideoWriter:
    """Stream frames into an H.264 mp4, published atomically on close.

    Use as a context manager::

        with VideoWriter("out/sample.mp4", fps=8) as writer:
            for chunk in chunks:          # F,3,H,W float [0, 1] or F,H,W,3 uint8
                writer.write(chunk)

    Frames are encoded as they arrive, so a long video never has to be held
    in memory. Odd heights/widths are padded to even by edge replication
    (yuv420p needs even sizes), so the file is up to one pixel taller/wider
    than the frames given. Encoding goes to a hidden temporary file in the
    same directory that is ``os.replace``d onto ``path`` only when the block
    exits cleanly; on an exception the temporary file is removed, so a crash
    never leaves a truncated mp4 under the final name. Parent directories are
    created. ``crf`` is libx264's constant rate factor (0 lossless .. 51 worst).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 8, crf: int = 18) -> None:
        if fps <= 0:
            raise ValueError(f"{path}: fps must be positive, found {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"{path}: crf must be in [0, 51], found {crf}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self._tmp_path: Path | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] | None = None  # H, W of the frames given (before padding)

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target so os.replace is an atomic rename, not a copy;
        # keep the suffix so FFmpeg picks the container format from it.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=f".tmp{self.path.suffix}")
        os.close(fd)
        self._tmp_path = Path(tmp)
        try:
            self._container = av.open(tmp, mode="w")
        except BaseException:
            self._tmp_path.unlink(missing_ok=True)
            raise
        return self

    def write(self, frames: Tensor | np.ndarray) -> None:
        """Append frames: ``F,3,H,W`` float in [0, 1] or ``F,H,W,3`` uint8.

        Every chunk must have the size of the first one.
        """
        if self._container is None:
            raise RuntimeError(f"{self.path}: VideoWriter.write called outside its `with` block")
        array = _to_uint8_frames(frames)
        size = (array.shape[1], array.shape[2])
        if self._size is None:
            self._size = size
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.height, self._stream.width = size[0] + size[0] % 2, size[1] + size[1] % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf)}
        elif size != self._size:
            expected, found = "x".join(map(str, self._size)), "x".join(map(str, size))
            raise ValueError(f"{self.path}: every chunk must be {expected} (HxW), found {found}")
        for frame in _pad_to_even(array):
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames_written += len(array)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._finish()
        else:
            self._abort()

    def _finish(self) -> None:
        if self._stream is None:
            self._abort()
            raise ValueError(f"{self.path}: no frames were written; an mp4 needs at least one")
        try:
            self._container.mux(self._stream.encode(None))  # flush frames the encoder is holding back
            self._container.close()
            os.chmod(self._tmp_path, umask_mode(directory=False))  # mkstemp made it 0600
            os.replace(self._tmp_path, self.path)
        except BaseException:
            self._abort()
            raise
        self._container = None

    def _abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass  # the file is being thrown away; the original exception is the one to report
            self._container = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)


def write_video(path: str | os.PathLike[str], video: Tensor | np.ndarray, fps: float = 8, crf: int = 18) -> Path:
    """Write ``video`` (``F,3,H,W`` float in [0, 1] or ``F,H,W,3`` uint8) to an mp4; return its path."""
    with VideoWriter(path, fps=fps, crf=crf) as writer:
        writer.write(video)
    return Path(path)


@contextmanager
def _open_video(
    path: str | os.PathLike[str],
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``path`` and yield (container, first video stream); VideoReadError if it is not a video."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file; expected a video file")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as error:
        raise VideoReadError(f"{path}: expected a video file, but FFmpeg cannot read it ({error})") from error
    try:
        # FFmpeg happily opens a single image (png_pipe, image2, ...) as a one-frame
        # "video"; a still image where a video was expected is almost always a mistake.
        demuxer = container.format.name
        if demuxer == "image2" or demuxer.endswith("_pipe"):
            raise VideoReadError(f"{path}: expected a video file, found a still image ({container.format.long_name})")
        if not container.streams.video:
            raise VideoReadError(f"{path}: expected a video file, found no video stream")
        yield container, container.streams.video[0]
    finally:
        container.close()


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def read_video(path: str | os.PathLike[str], num_frames: int | None = None) -> tuple[Tensor, float]:
    """Decode a video file.

    Returns ``(video, fps)``: ``video`` is ``F,3,H,W`` float32 in [0, 1], with
    ``F`` the first ``num_frames`` frames (all of them if None, fewer if the
    file is shorter). Raises VideoReadError naming the file if it is missing
    or not a decodable video.
    """
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"{path}: num_frames must be >= 1 or None, found {num_frames}")
    frames: list[np.ndarray] = []
    with _open_video(path) as (container, stream):
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if num_frames is not None and len(frames) == num_frames:
                    break
        except av.error.FFmpegError as error:
            raise VideoReadError(
                f"{path}: expected a decodable video, decoding failed after {len(frames)} frames ({error})"
            ) from error
        fps = _stream_fps(stream)
    if not frames:
        raise VideoReadError(f"{path}: expected a video with at least one frame, found none")
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)
    return video.contiguous(), fps


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, size and fps of a video file, without decoding it."""
    with _open_video(path) as (container, stream):
        frames = stream.frames
        if frames == 0:
            # Some containers (e.g. webm, raw streams) do not store a count: count packets instead.
            frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return VideoInfo(frames=frames, height=stream.height, width=stream.width, fps=_stream_fps(stream))
