"""``turbo-report``: one table from a sweep of ``turbo-train`` runs (or of turbo-eval results:
eval/harness/report.py).

    turbo-train -m objective=toy_cd,toy_dmd2,toy_w2s reward=toy,none
    turbo-report multirun/2026-11-23/22-40-00 --out docs/toy_results.md

Each finished run (a folder with a ``DONE`` marker) contributes one row per sampler of its
end-of-run benchmark (``DONE["eval"]``, e.g. ToyBench's teacher at 50 and 4 steps and the student
at 4): the sweep's overrides that tell runs apart, the scores, sampling seconds per video and the
run's training steps and time. Rows of samplers that do not depend on the run (the teacher, when
every run has the same teacher) are printed once.

A sweep over seeds (``turbo-train -m seed=0,1,2 reward=toy,none``) is pooled with ``--seeds``:
one row per arm (the overrides but ``seed=``) and sampler, each score as mean +- sd over the
arm's runs, with n; ``--plot curves.png`` draws the validation probe (``--metric``, default
``val/total``) against the training step, the arm's mean with a band of +- one sd. Several
folders can be pooled into one table (an arm shared by two claims is run once).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.harness.report import own_overrides

SCORES = ("quality", "semantic", "total", "colour", "shape", "motion", "count")


def find_runs(*roots: str | Path) -> list[Path]:
    runs = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"turbo-report: {root} is not a directory of runs")
        found = sorted((p.parent for p in root.rglob("DONE")), key=lambda p: str(p))
        if not found:
            raise FileNotFoundError(f"turbo-report: no finished run (a folder with a DONE marker) under {root}")
        runs += found
    return runs


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def collect(*roots: str | Path) -> list[dict]:
    """One dict per (run, sampler): ``run`` (the overrides that differ between runs), ``arm`` (the
    same without ``seed=``), ``sampler``, the scores, ``sec_per_video``, ``train_steps``,
    ``train_minutes`` and ``path`` (the run's folder)."""
    runs = find_runs(*roots)
    overrides = own_overrides(runs)
    rows = []
    for run in runs:
        done, metrics = json.loads((run / "DONE").read_text()), _metrics(run)
        differ = overrides[run]
        label = " ".join(differ) or run.name
        arm = " ".join(o for o in differ if not o.startswith("seed=")) or "(default)"
        for sampler, scores in (done.get("eval") or {}).items():
            rows.append({"run": label, "arm": arm, "sampler": sampler, **{k: scores[k] for k in SCORES},
                         "sec_per_video": scores["sec_per_video"], "train_steps": done.get("steps", 0),
                         "train_minutes": sum(m.get("sec", 0.0) for m in metrics) / 60, "path": run})
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var ** 0.5


def pooled(rows: list[dict], reach: float | None = None, metric: str = "val/total") -> list[dict]:
    """Seeds pooled: one dict per (arm, sampler) in first-seen order, ``n`` and ``(mean, sd)`` per
    score. A teacher (it does not depend on the training seed) is pooled over the runs that share
    it, labelled by their arms, or ``(every run)``. With ``reach``: also ``reach_steps``, per
    student arm the ``(mean, sd)`` over its runs of the first step at which ``metric`` reached
    ``reach`` x the run's first (many-step) teacher Total, and ``reached`` (how many runs did)."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = ("teacher", r["sampler"], round(r["total"], 3)) if r["sampler"].startswith("teacher") else (r["arm"], r["sampler"])
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        sampler = members[0]["sampler"]
        if key[0] == "teacher":
            shared = list(dict.fromkeys(m["arm"] for m in members))
            arm = "(every run)" if shared == arms else ", ".join(shared)
        else:
            arm = key[0]
        row = {"arm": arm, "sampler": sampler, "n": len(members),
               **{k: _mean_sd([m[k] for m in members]) for k in (*SCORES, "sec_per_video")}}
        if reach is not None and key[0] != "teacher":
            steps = [_first_step_reaching(m["path"], reach * _teacher_total(rows, m["path"]), metric) for m in members]
            hit = [s for s in steps if s is not None]
            row["reach_steps"], row["reached"] = (_mean_sd(hit) if hit else None), len(hit)
        out.append(row)
    return out


def _teacher_total(rows: list[dict], run: Path) -> float:
    return next(r["total"] for r in rows if r["path"] == run and r["sampler"].startswith("teacher"))


def _first_step_reaching(run: Path, threshold: float, metric: str) -> int | None:
    return next((m["step"] for m in _metrics(run) if isinstance(m.get(metric), (int, float))
                 and m[metric] >= threshold), None)


def pooled_table(rows: list[dict], reach: float | None = None, metric: str = "val/total") -> str:
    """Markdown of :func:`pooled`: each score as mean +- sd over n runs (and, with ``reach``, the
    steps to reach that fraction of the teacher: mean +- sd over the runs that did, of n)."""
    extra = f" steps to {reach:g} x teacher ({metric}) |" if reach is not None else ""
    lines = ["| arm | sampler | n | Quality | Semantic | Total | colour | shape | motion | count | s / video |" + extra,
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if extra else "")]
    for r in pooled(rows, reach, metric):
        cells = [f"{r[k][0]:.1f} ± {r[k][1]:.1f}" for k in SCORES]
        line = f"| {r['arm']} | {r['sampler']} | {r['n']} | " + " | ".join(cells) + f" | {r['sec_per_video'][0]:.3f} |"
        if extra:
            steps = r.get("reach_steps")
            line += "" if "reached" not in r else (
                f" {steps[0]:.0f} ± {steps[1]:.0f} ({r['reached']} of {r['n']}) |" if steps else f" not reached (0 of {r['n']}) |")
            line += "" if "reached" in r else " |"
        lines.append(line)
    return "\n".join(lines)


def curves(rows: list[dict], metric: str = "val/total") -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Per arm: the steps at which every one of its runs logged ``metric``, and its mean and sd there."""
    paths: dict[str, list[Path]] = {}
    for r in rows:
        if not r["sampler"].startswith("teacher") and r["path"] not in paths.setdefault(r["arm"], []):
            paths[r["arm"]].append(r["path"])
    out = {}
    for arm, runs in paths.items():
        series = [{m["step"]: m[metric] for m in _metrics(run) if isinstance(m.get(metric), (int, float))}
                  for run in runs]
        steps = sorted(set.intersection(*(set(s) for s in series)))
        if steps:
            stats = [_mean_sd([s[step] for s in series]) for step in steps]
            out[arm] = (steps, [m for m, _ in stats], [sd for _, sd in stats])
    return out


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
    parser.add_argument("roots", nargs="+", help="multirun folders (or any folders holding finished runs)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--seeds", action="store_true", help="pool runs that differ only in seed= (mean +- sd)")
    parser.add_argument("--plot", help="write the validation probe against the step, per arm, to this PNG")
    parser.add_argument("--metric", default="val/total", help="the metrics.jsonl key --plot draws (default val/total)")
    parser.add_argument("--drop", nargs="+", default=[], metavar="ARM",
                        help="leave out the runs of these arms (as the table labels them, e.g. reward=toy)")
    parser.add_argument("--reach", type=float, help="with --seeds: steps until --metric reaches this fraction of "
                                                    "the run's many-step teacher Total (e.g. 0.9)")
    parser.add_argument("--by", help="turbo-eval results: --plot draws --metric (default Total) against this setting")
    parser.add_argument("--bars", help="turbo-eval results: the bar chart per dimension to this PNG (with --out: "
                                       "<out stem>_bars.png beside it)")
    args = parser.parse_args(argv)
    if not any(Path(r).is_dir() and any(Path(r).rglob("DONE")) for r in args.roots):
        from eval.harness.report import find_results, report

        if any(find_results(r) for r in args.roots if Path(r).is_dir()):  # turbo-eval folders, not turbo-train runs
            metric = "Total" if args.metric == "val/total" else args.metric
            try:
                print(report(args.roots, args.out, args.plot, args.by, metric, args.bars))
            except (ValueError, FileNotFoundError) as e:
                raise SystemExit(str(e)) from None
            return
    rows = [r for r in collect(*args.roots) if r["arm"] not in args.drop]
    if not rows:
        raise SystemExit(f"turbo-report: --drop {' '.join(args.drop)} leaves no run")
    text = pooled_table(rows, args.reach, args.metric) if args.seeds else table(rows)
    print(text)
    if args.plot:
        from turbo.plots import plot_bands

        series = curves(rows, args.metric)
        if not series:
            raise SystemExit(f"turbo-report: no run logged {args.metric!r} in metrics.jsonl (eval.every, --metric)")
        teachers: dict[float, list[str]] = {}  # the teachers' Totals as reference lines, one per value
        for r in pooled(rows):
            if r["sampler"].startswith("teacher") and args.metric.endswith("total"):
                teachers.setdefault(round(r["total"][0], 1), []).append(f"{r['sampler']} ({r['arm']})")
        plot_bands(series, args.plot, ylabel=args.metric,
                   levels={" / ".join(labels): value for value, labels in teachers.items()})
    if args.out:
        from turbo.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
