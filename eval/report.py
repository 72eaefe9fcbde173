"""``turbo-report``: one table from a sweep of ``turbo-train`` runs.

    turbo-train -m objective=toy_cd,toy_dmd2,toy_w2s reward=toy,none
    turbo-report multirun/2026-11-23/22-40-00 --out docs/toy_results.md

Each finished run (a folder with a ``DONE`` marker) contributes one row per sampler of its
end-of-run benchmark (``DONE["eval"]``, e.g. ToyBench's teacher at 50 and 4 steps and the student
at 4): the sweep's overrides that tell runs apart, the scores, sampling seconds per video and the
run's training steps and time. Rows of samplers that do not depend on the run (the teacher, when
every run has the same teacher) are printed once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

SCORES = ("quality", "semantic", "total", "colour", "shape", "motion", "count")


def find_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"turbo-report: {root} is not a directory of runs")
    runs = sorted((p.parent for p in root.rglob("DONE")), key=lambda p: str(p))
    if not runs:
        raise FileNotFoundError(f"turbo-report: no finished run (a folder with a DONE marker) under {root}")
    return runs


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def collect(root: str | Path) -> list[dict]:
    """One dict per (run, sampler): ``run`` (the overrides that differ between runs), ``sampler``,
    the scores, ``sec_per_video``, ``train_steps``, ``train_minutes``."""
    runs = find_runs(root)
    overrides = {run: _overrides(run) for run in runs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    rows = []
    for run in runs:
        done = json.loads((run / "DONE").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        label = " ".join(o for o in overrides[run] if o not in shared) or run.name
        for sampler, scores in (done.get("eval") or {}).items():
            rows.append({"run": label, "sampler": sampler, **{k: scores[k] for k in SCORES},
                         "sec_per_video": scores["sec_per_video"], "train_steps": done.get("steps", 0),
                         "train_minutes": sum(m.get("sec", 0.0) for m in metrics) / 60})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: teacher rows once (identical across runs up to timing), then each run's students."""
    lines = ["| run | sampler | Quality | Semantic | Total | colour | shape | motion | count | s / video | "
             "train steps | train min |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen_teachers: set[tuple] = set()
    for r in rows:
        is_teacher = r["sampler"].startswith("teacher")
        if is_teacher:
            key = (r["sampler"], round(r["total"], 3))
            if key in seen_teachers:
                continue
            seen_teachers.add(key)
        run, steps, minutes = ("(every run)", "", "") if is_teacher else (
            r["run"], str(r["train_steps"]), f"{r['train_minutes']:.1f}")
        lines.append(f"| {run} | {r['sampler']} | " + " | ".join(f"{r[k]:.1f}" for k in SCORES)
                     + f" | {r['sec_per_video']:.3f} | {steps} | {minutes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="turbo-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a multirun folder (or any folder holding finished runs)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    text = table(collect(args.root))
    print(text)
    if args.out:
        from turbo.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
