"""What the DataLoader buys on a folder of videos: ``python -m eval.loader_bench``.

Writes ``--videos`` toy-world mp4s (``--source-frames`` frames at ``--source-size``, H.264) with a
``metadata.jsonl`` into a temporary folder, then reads training batches of ``data=videos``
(``VideoFolderDataset``: decode, first ``--frames`` frames, resize and centre-crop to ``--size``)
through ``distill.data.step_loader`` with 0 workers (the items read one by one in the training
process, as before the DataLoader) and with 1, 2, ... workers. A warm-up pass (the files in the
page cache, workers started), then the median of ``--repeats`` passes over ``--steps`` steps;
prints items per second and the ratio to 0 workers. Reading only: in training the workers prepare
the next batches while the current step computes, which is where they pay even on few cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from distill.data import StepBatches, VideoFolderDataset, step_loader
from eval.toy_teachers import emit
from turbo.timing import median_seconds
from turbo.toy.world import ToyWorld
from turbo.video import write_video


def write_folder(root: Path, videos: int, frames: int, size: int) -> Path:
    world = ToyWorld(num_frames=frames, height=size, width=size, seed=0)
    lines = []
    for i in range(videos):
        caption, clip = world.sample(i)
        write_video(root / f"{i:04d}.mp4", clip, fps=8)
        lines.append(json.dumps({"video": f"{i:04d}.mp4", "caption": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def items_per_second(dataset, batch_size: int, steps: int, workers: int, repeats: int) -> float:
    batches, starts = StepBatches(dataset, batch_size, seed=0), itertools.count(0, steps)

    def one_pass() -> None:  # each pass reads the next `steps` batches, as a long run does
        start = next(starts)
        for _ in step_loader(batches, start, start + steps, num_workers=workers):
            pass

    # the warm-up pass pays page cache and worker start-up once, as in a long run
    return steps * batch_size / median_seconds(one_pass, repeats=repeats)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m eval.loader_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--source-frames", type=int, default=33)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # each reader on one thread, as a worker process is
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp), args.videos, args.source_frames, args.source_size)
        dataset = VideoFolderDataset(root, num_frames=args.frames, height=args.size, width=args.size)
        rates = {w: items_per_second(dataset, args.batch_size, args.steps, w, args.repeats) for w in args.workers}
    base = rates.get(0)
    lines = [f"Reading `data=videos` batches: {args.videos} mp4s of {args.source_frames} x {args.source_size}^2, "
             f"items of {args.frames} x {args.size}^2, batch {args.batch_size}, median of {args.repeats} x "
             f"{args.steps} steps after a warm-up", "",
             "| DataLoader workers | items / s | vs 0 workers |", "|---|---|---|"]
    lines += [f"| {w} | {r:.1f} | {r / base:.2f}x |" if base else f"| {w} | {r:.1f} | |" for w, r in rates.items()]
    return emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
