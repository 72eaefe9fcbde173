"""``turbo-report`` on turbo-eval results: one table, a bar chart per dimension, sweep plots.

    turbo-eval -m lora=null,runs/cd/student,runs/dmd2/student hydra.sweep.dir=evals/sweep
    turbo-report evals/sweep --out evals/sweep/report.md      # + report_bars.png beside it
    turbo-report evals/sweep --by lora --metric Total --plot total_by_student.png

Each folder holding a ``results.json`` (written by turbo-eval's aggregate stage) is one row,
labelled by the overrides that tell the evaluations apart (or by its folder name): the teacher
(``lora`` unset) and its students side by side, every dimension and the benchmark's totals.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

TEACHER = "teacher"


def find_results(*roots: str | Path) -> list[Path]:
    found = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"turbo-report: {root} is not a directory")
        found += sorted(p.parent for p in root.rglob("results.json"))
    return found


def own_overrides(folders: list[Path]) -> dict[Path, list[str]]:
    """Each folder's Hydra overrides (``.hydra/overrides.yaml``) less those every folder shares: what
    tells the runs (turbo-train) or evaluations (turbo-eval) apart."""
    paths = {f: f / ".hydra" / "overrides.yaml" for f in folders}
    overrides = {f: [str(o) for o in yaml.safe_load(p.read_text()) or []] if p.is_file() else [] for f, p in paths.items()}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    return {f: [o for o in own if o not in shared] for f, own in overrides.items()}


def collect(*roots: str | Path) -> list[dict]:
    """One dict per evaluation: ``label``, ``settings`` (override key -> value), ``suite``,
    ``dimensions``, ``aggregate``, ``builtin``, ``partial``, ``path``."""
    folders = find_results(*roots)
    if not folders:
        raise FileNotFoundError(f"turbo-report: no results.json (written by turbo-eval) under {', '.join(map(str, roots))}")
    overrides = own_overrides(folders)
    rows = []
    for folder in folders:
        try:
            result = json.loads((folder / "results.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / 'results.json'}: is not JSON ({e.msg}); expected turbo-eval's results") from None
        own = overrides[folder]
        settings = dict(o.split("=", 1) for o in own if "=" in o)
        label = " ".join(own) or (TEACHER if not result.get("lora") else folder.name)
        rows.append({**result, "label": label, "settings": settings, "path": str(folder)})
    suites = {r["suite"] for r in rows}
    if len(suites) > 1:
        raise ValueError(f"turbo-report: the results mix suites {sorted(suites)}; report one suite at a time")
    return rows


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def table(rows: list[dict]) -> str:
    dims = list(dict.fromkeys(d for r in rows for d in _numbers(r["dimensions"])))
    totals = list(dict.fromkeys(k for r in rows for k in _numbers(r["aggregate"])))
    builtin = list(dict.fromkeys(k for r in rows for k in _numbers(r.get("builtin", {}))))
    head = ["evaluation", *dims, *builtin, *(f"**{t}**" for t in totals)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d, b, a = _numbers(r["dimensions"]), _numbers(r.get("builtin", {})), _numbers(r["aggregate"])
        cells = [r["label"] + (" (partial)" if r.get("partial") else "")]
        cells += [f"{d[k]:.4f}" if k in d else "—" for k in dims] + [f"{b[k]:.4f}" if k in b else "—" for k in builtin]
        cells += [f"**{a[k]:.4f}**" if k in a else "—" for k in totals]
        lines.append("| " + " | ".join(cells) + " |")
    return f"{rows[0]['suite']}, {len(rows)} evaluations\n\n" + "\n".join(lines)


def bars(rows: list[dict], path: str | Path) -> Path:
    """Every dimension (as the aggregation normalises it when it did, else raw), one bar per evaluation."""
    from turbo.plots import plot_bars

    groups = {}
    for r in rows:
        normalized = r["aggregate"].get("normalized") if isinstance(r["aggregate"], dict) else None
        groups[r["label"]] = _numbers(normalized or r["dimensions"])
    return plot_bars(groups, path, ylabel=f"{rows[0]['suite']} score per dimension")


def against(rows: list[dict], by: str, metric: str, path: str | Path) -> Path:
    """``metric`` (an aggregate key, a dimension or a built-in metric) against the swept setting ``by``,
    one line per combination of the other settings."""
    from turbo.plots import plot_against

    if not any(by in r["settings"] for r in rows):
        raise ValueError(f"turbo-report --by {by}: no evaluation sets {by}= (the swept settings are "
                         f"{sorted({k for r in rows for k in r['settings']})})")
    series: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        values = {**_numbers(r["dimensions"]), **_numbers(r.get("builtin", {})), **_numbers(r["aggregate"])}
        if metric not in values:
            raise ValueError(f"turbo-report --metric {metric}: {r['path']} has no such score; it has {sorted(values)}")
        x = r["settings"].get(by, "(unset)")
        rest = " ".join(f"{k}={v}" for k, v in sorted(r["settings"].items()) if k != by)
        series.setdefault(rest, []).append((x, values[metric]))
    return plot_against(series, path, xlabel=by, ylabel=metric)


def report(roots: list[str], out: str | None = None, plot: str | None = None, by: str | None = None,
           metric: str = "Total", bars_png: str | None = None) -> str:
    """The table (printed; written to ``out`` with the bar chart beside it as ``<out stem>_bars.png``)."""
    rows = collect(*roots)
    text = table(rows)
    if out is not None:
        from turbo.atomic import atomic_write_text

        atomic_write_text(out, text + "\n")
        bars_png = bars_png or str(Path(out).with_name(Path(out).stem + "_bars.png"))
    if bars_png is not None:
        bars(rows, bars_png)
    if plot is not None:
        if by is None:
            raise ValueError("turbo-report --plot on evaluations needs --by <the swept setting, e.g. lora>")
        against(rows, by, metric, plot)
    return text
