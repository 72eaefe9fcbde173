"""The sample stage of turbo-eval: a suite's items -> video files, resumable and shardable.

    sample_suite(generate, items, out, shard=i, num_shards=n)

- **Resumable.** A video is written to ``<out>/tmp/<shard>/`` and moved into ``<out>/videos/`` with
  ``os.replace`` once complete, so a file under ``videos/`` is always whole: a killed run restarted
  with the same arguments skips every file that exists and samples the rest. Leftover partial files
  in ``tmp/`` are removed at the start (never under ``videos/``, where VBench's loader would see them).
- **Shardable.** Shard ``i`` of ``n`` takes items ``i, i + n, i + 2n, ...``; each file's noise comes
  from its own seed (``suites.item_seed``), so the union of the shards is the unsharded run,
  file for file.
- **A manifest.** ``<out>/manifest/shard-<i>-of-<n>.jsonl``: one line per file of the shard with its
  prompt, the prompt the model was given, its seed and index (``read_manifest`` merges the shards).

Each item is sampled on its own (batch 1): a batch would share one generator between files and make
a file's content depend on its neighbours.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from eval.harness.suites import Item

# generate(item) -> the item's video, F,3,H,W float in [0, 1]
Generate = Callable[[Item], Tensor]


@dataclass(frozen=True)
class SampleReport:
    written: int
    skipped: int
    seconds: float
    shard: int
    num_shards: int


def shard_items(items: list[Item], shard: int = 0, num_shards: int = 1) -> list[Item]:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, found {num_shards}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard}: must lie in [0, num_shards={num_shards})")
    return items[shard::num_shards]


def manifest_path(out: Path, shard: int, num_shards: int) -> Path:
    return Path(out) / "manifest" / f"shard-{shard}-of-{num_shards}.jsonl"


def read_manifest(out: str | Path) -> dict[str, dict]:
    """Every shard's manifest lines, by file (a file recorded twice keeps its last line)."""
    rows: dict[str, dict] = {}
    folder = Path(out) / "manifest"
    for path in sorted(folder.glob("shard-*.jsonl")) if folder.is_dir() else []:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: is not a JSON line (a manifest written by turbo-eval)") from None
            rows[row["file"]] = row
    return rows


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="video", dynamic_ncols=True,
                disable=os.environ.get("TURBO_PROGRESS", "1") == "0")


def sample_suite(generate: Generate, items: list[Item], out: str | Path, *, write: Callable[[Path, Tensor], None],
                 shard: int = 0, num_shards: int = 1, extra: dict | None = None,
                 after_each: Callable[[int], None] | None = None) -> SampleReport:
    """Sample this shard's items that are not yet under ``<out>/videos`` and record them in the
    shard's manifest. ``write(path, video)`` writes one mp4 (``turbo.video.write_video`` with the
    run's fps); ``extra`` is added to every manifest line (model, sampler). ``after_each(n)`` is
    called after each new file (tests use it to stop a run midway)."""
    out = Path(out)
    # each shard has its own temp folder: shards run at once into one folder
    videos, tmp = out / "videos", out / "tmp" / f"shard-{shard}-of-{num_shards}"
    mine = shard_items(items, shard, num_shards)
    manifest = manifest_path(out, shard, num_shards)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)  # partial files of this shard's killed run; only whole files live under videos/
    tmp.mkdir(parents=True)
    recorded = set(read_manifest(out))
    start = time.perf_counter()
    done = [item for item in mine if (videos / item.file).is_file()]
    todo = [item for item in mine if not (videos / item.file).is_file()]
    with open(manifest, "a") as log:
        # a file moved into place by a run killed before its manifest line: its line is exact (the seed
        # is a function of the item), so it is written now
        _record(log, [item for item in done if item.file not in recorded], extra)
        bar = _progress(len(mine), len(done), f"shard {shard}/{num_shards}")
        for n, item in enumerate(todo, 1):
            video = generate(item)
            final = videos / item.file
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = tmp / f"{n}.mp4"
            write(partial, video)
            os.replace(partial, final)
            _record(log, [item], extra)
            bar.update(1)
            if after_each is not None:
                after_each(n)
        bar.close()
    shutil.rmtree(tmp, ignore_errors=True)
    if tmp.parent.is_dir() and not any(tmp.parent.iterdir()):
        tmp.parent.rmdir()
    return SampleReport(len(todo), len(done), time.perf_counter() - start, shard, num_shards)


def _record(log, items: Iterable[Item], extra: dict | None) -> None:
    for item in items:
        log.write(json.dumps({**item.to_json(), **(extra or {})}) + "\n")
    log.flush()
    os.fsync(log.fileno())


def missing_files(items: list[Item], out: str | Path) -> list[str]:
    """The suite's files not (yet) under ``<out>/videos`` (all shards together)."""
    videos = Path(out) / "videos"
    return [item.file for item in items if not (videos / item.file).is_file()]
