"""Datasets for training and evaluation.

Every item is a dict ``{"prompt": str, "video": Tensor}`` with ``video``
``F,3,H,W`` float32 in [0, 1]; prompt-only datasets omit ``"video"``. Every
dataset class says which kind it is in its class attribute ``has_videos``, so
an objective that needs real videos can refuse a prompt-only dataset before
training starts. ``collate`` batches items to ``{"prompt": list[str], "video":
B,F,3,H,W}``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from turbo.toy.split import training_specs
from turbo.toy.world import ToyWorld
from turbo.video import VideoReadError, read_video, resize_cover_crop

__all__ = ["BadItemError", "PromptDataset", "StepBatches", "ToyVideoDataset", "VideoFolderDataset", "collate", "draw_items",
           "step_candidates", "step_loader",
           "drop_empty_captions"]


class BadItemError(VideoReadError):
    """An item that cannot be used (an unreadable, truncated, empty or too-short video): the
    training loop skips it, counts it and refills the batch."""


def drop_empty_captions(captions: list[str], where: list[str], source: str) -> list[int]:
    """Indices of the non-empty captions; every dataset drops empty ones alike, with one warning
    naming the first few (an empty caption would silently train the unconditional branch)."""
    keep = [i for i, c in enumerate(captions) if c.strip()]
    if not keep:
        raise ValueError(f"{source}: every caption is empty; expected at least one non-empty caption")
    dropped = [where[i] for i in range(len(captions)) if not captions[i].strip()]
    if dropped:
        warnings.warn(f"{source}: skipped {len(dropped)} item(s) with an empty caption: {', '.join(dropped[:5])}"
                      + (" ..." if len(dropped) > 5 else ""), stacklevel=3)
    return keep


def draw_items(dataset: Dataset, candidates: list[int], count: int, bad: dict[int, str]) -> tuple[list[dict], list[int]]:
    """The first ``count`` usable items of ``candidates`` (dataset indices, in order). Items that
    raise BadItemError are skipped, recorded in ``bad`` (index -> reason) and never read again, so
    the batch is refilled from the next candidates: a deterministic function of (candidates, the
    files), so a resumed run draws the same batches. Returns (items, newly bad indices)."""
    items, new = [], []
    for index in candidates:
        if len(items) == count:
            break
        if index in bad:
            continue
        try:
            items.append(dataset[index])
        except BadItemError as error:
            bad[index] = str(error)
            new.append(index)
    if len(items) < count:
        raise ValueError(f"data: only {len(items)} usable items left for a batch of {count} "
                         f"({len(bad)} of {len(dataset)} skipped, e.g. {next(iter(bad.values()))})")
    return items, new


def _check_index(index: int, length: int, name: str) -> None:
    # IndexError (not ValueError) so plain `for item in dataset` iteration stops.
    if not 0 <= index < length:
        raise IndexError(f"{name} index {index} out of range for {length} items")


class ToyVideoDataset(Dataset):
    """``size`` clips from the toy world: item ``i`` is ``ToyWorld(...).sample(i)``, same every epoch.

    ``split``: "train" draws only the one-object scenes of ``turbo.toy.split.training_specs`` (so
    ToyBench's held-out prompts stay unseen); "all" draws from the whole world (``max_objects``).
    """

    has_videos = True

    def __init__(
        self, size: int, num_frames: int, height: int, width: int, max_objects: int = 1, seed: int = 0,
        split: str = "train",
    ) -> None:
        if size < 1:
            raise ValueError(f"data.size must be >= 1, found {size}")
        if split not in ("train", "all"):
            raise ValueError(f"data.split must be 'train' or 'all', found {split!r}")
        if split == "train" and max_objects != 1:
            raise ValueError(f"data.split=train holds one-object scenes only; found data.max_objects={max_objects} "
                             f"(use data.split=all for multi-object scenes)")
        self.size = size
        specs = training_specs() if split == "train" else None
        self.world = ToyWorld(num_frames=num_frames, height=height, width=width, max_objects=max_objects,
                              seed=seed, specs=specs)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        _check_index(index, self.size, type(self).__name__)
        prompt, video = self.world.sample(index)
        return {"prompt": prompt, "video": video}


class VideoFolderDataset(Dataset):
    """Captioned videos listed in a jsonl file under ``root``.

    Each non-empty line of ``root/metadata`` is ``{"video": "relative/path.mp4",
    "caption": "..."}``. Items are the first ``num_frames`` frames, resized so
    the shorter side fits (bilinear, antialiased) and center-cropped to
    ``height x width``: ``F,3,H,W`` float32 in [0, 1]. The listing is checked
    at construction, so a typo fails before training rather than hours in.
    """

    has_videos = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        metadata: str = "metadata.jsonl",
        *,
        num_frames: int,
        height: int,
        width: int,
        verify: bool = False,
        max_skip_fraction: float = 0.05,
    ) -> None:
        if not 0 <= max_skip_fraction <= 1:
            raise ValueError(f"data.max_skip_fraction must be in [0, 1], found {max_skip_fraction}")
        self.max_skip_fraction = max_skip_fraction
        self.root = Path(root)
        self.num_frames, self.height, self.width = num_frames, height, width
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root: expected a directory of videos, found nothing at {self.root}")
        metadata_path = self.root / metadata
        if not metadata_path.is_file():
            raise FileNotFoundError(
                f"data.root / data.metadata: expected a metadata file at {metadata_path}, found none"
            )
        items, where = [], []
        for line_number, line in enumerate(metadata_path.read_text().splitlines(), start=1):
            if line.strip():
                items.append(self._parse_line(line, f"{metadata_path}:{line_number}"))
                where.append(f"{metadata_path}:{line_number}")
        if not items:
            raise ValueError(f"{metadata_path}: expected at least one {{\"video\": ..., \"caption\": ...}}"
                             " line, found none")
        keep = drop_empty_captions([caption for _, caption in items], where, f"{metadata_path}")
        self.items: list[tuple[Path, str]] = [items[i] for i in keep]
        if verify:
            self.verify()

    def _parse_line(self, line: str, where: str) -> tuple[Path, str]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: expected a JSON object, found invalid JSON ({error})") from error
        if not isinstance(record, dict) or not {"video", "caption"} <= record.keys():
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where}: expected keys 'video' and 'caption', found {found}")
        if not isinstance(record["video"], str) or not isinstance(record["caption"], str):
            raise ValueError(f"{where}: expected 'video' and 'caption' to be strings, found {record!r}")
        path = self.root / record["video"]
        if not path.is_file():
            raise FileNotFoundError(f"{where}: listed video {path} does not exist")
        return path, record["caption"]

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        """The file behind item ``index`` (for the log of skipped items)."""
        return str(self.items[index][0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        _check_index(index, len(self.items), type(self).__name__)
        path, caption = self.items[index]
        try:
            video, _ = read_video(path, num_frames=self.num_frames)
        except VideoReadError as error:
            raise BadItemError(str(error)) from None
        if video.shape[0] < self.num_frames:
            found = video.shape[0]
            raise BadItemError(f"{path}: expected at least {self.num_frames} frames (video.num_frames), found {found}")
        return {"prompt": caption, "video": resize_cover_crop(video, self.height, self.width)}

    def verify(self) -> None:
        """``data.verify=true``: decode every listed file before training; one error listing the bad ones."""
        bad = {}
        for index in range(len(self.items)):
            try:
                self[index]
            except BadItemError as error:
                bad[str(self.items[index][0].relative_to(self.root))] = str(error)
        if bad:
            first = next(iter(bad.values()))
            raise ValueError(f"data.verify: {len(bad)} of {len(self.items)} videos are unusable: {', '.join(bad)} "
                             f"(the first: {first})")


class PromptDataset(Dataset):
    """Prompts without videos (for data-free objectives and evaluation): items are ``{"prompt": str}``.

    Give either ``prompts`` or ``prompt_file`` (one prompt per line; blank lines are skipped).
    """

    has_videos = False

    def __init__(self, prompts: list[str] | None = None, prompt_file: str | os.PathLike[str] | None = None) -> None:
        if (prompts is None) == (prompt_file is None):
            raise ValueError("PromptDataset: expected exactly one of data.prompts and data.prompt_file, "
                             f"found {'both' if prompts is not None else 'neither'}")
        if prompt_file is not None:
            path = Path(prompt_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"data.prompt_file: expected a text file with one prompt per line, found nothing at {path}"
                )
            prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            where = f"data.prompt_file {path}"
        else:
            where = "data.prompts"
        if not prompts:
            raise ValueError(f"{where}: expected at least one prompt, found none")
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"{where}: expected strings, found {bad[0]!r}")
        keep = drop_empty_captions(list(prompts), [f"{where}[{i}]" for i in range(len(prompts))], where)
        self.prompts = [prompts[i] for i in keep]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        _check_index(index, len(self.prompts), type(self).__name__)
        return {"prompt": self.prompts[index]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: ``{"prompt": list[str], "video": B,F,3,H,W}`` (no "video" if the items have none);
    items of a cache (``distill.cache.CachedDataset``) stack their ``latents``, ``text`` tensors and
    ``first_frame``. torch's ``default_collate`` batches; the checks first make its errors name the problem."""
    if not items:
        raise ValueError("collate: expected at least one item, found an empty batch")
    with_video = sum("video" in item for item in items)
    if with_video not in (0, len(items)):
        raise ValueError(f"collate: expected all items or none to have a video, found {with_video} of {len(items)}")
    shapes = {tuple(item["video"].shape) for item in items} if with_video else set()
    if len(shapes) > 1:
        raise ValueError(f"collate: expected videos of one shape F,3,H,W, found {sorted(shapes)}")
    return default_collate(items)


# --- the batches of a run, in DataLoader workers ---------------------------------------------------
def step_candidates(n: int, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset indices for ``step``'s batch, in the order they are tried: a fixed slice of the
    permutation of epoch ``step // (n // batch_size)`` seeded by (seed, epoch), followed by the rest
    of that permutation (the refill for unusable items); process ``rank`` of ``world`` takes every
    ``world``-th one. A function of (seed, step) only, so a resumed run replays the same batches."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return (order[i * batch_size:] + order[:i * batch_size])[rank::world]


class StepBatches(Dataset):
    """Item ``step`` = that step's collated batch for this process and the unusable items found
    while drawing it: ``{"step", "items", "bad": {index: reason}}``. Indexed by step (not by item),
    so a ``torch.utils.data.DataLoader`` with workers prefetches whole batches in order and a
    resumed run simply starts at its step (step-exact without replaying a sampler, which is what
    accelerate's ``skip_first_batches`` would do). ``known_bad`` is the run's record when the
    loader starts; an item found bad in a worker is skipped there either way, so the batches do
    not depend on which worker found what."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 known_bad: dict[int, str] | None = None) -> None:
        self.dataset, self.batch_size, self.seed, self.rank, self.world = dataset, batch_size, seed, rank, world
        self.known_bad = dict(known_bad or {})

    def __len__(self) -> int:
        return 2**62  # any step (the loader's sampler says which)

    def __getitem__(self, step: int) -> dict[str, Any]:
        candidates = step_candidates(len(self.dataset), self.batch_size, self.seed, step, self.rank, self.world)
        bad = dict(self.known_bad)
        items, new = draw_items(self.dataset, candidates, len(range(self.rank, self.batch_size, self.world)), bad)
        return {"step": step, "items": collate(items), "bad": {j: bad[j] for j in new}}


def step_loader(batches: StepBatches, start: int, stop: int, num_workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The batches of steps ``start .. stop - 1`` in order, ``num_workers`` processes preparing the
    next ones while the current step trains (0: in the training process)."""
    return torch.utils.data.DataLoader(batches, sampler=range(start, stop), batch_size=None, num_workers=num_workers,
                                       collate_fn=_as_is, pin_memory=pin_memory,
                                       prefetch_factor=2 if num_workers else None)


def _as_is(batch):  # module level: DataLoader workers pickle the collate function
    return batch
