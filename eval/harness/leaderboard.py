"""VBench's leaderboard upload: the zip ``scripts/cal_final_score.py`` reads, written and read back.

    write_leaderboard_zip(Path("evaluation_results/"), Path("submission.zip"), "my_model")
    read_leaderboard_zip("submission.zip")   # {dimension: score}, as cal_final_score reads it
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Mapping

from eval.harness.aggregate import (VBENCH_DIMENSIONS, VBENCH_I2V_DIMENSIONS, Scores, _check, _dimension_scores,
                                    _load_json, read_vbench_results)
from turbo.atomic import atomic_file


def _member_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith((".", "__")):
        raise ValueError(f"leaderboard zip: bad results name {name!r} (cal_final_score skips names "
                         "starting with '.' or '__'; no path separators)")
    return name


def write_leaderboard_zip(results: Mapping[str, float] | str | Path, zip_path: str | Path, name: str) -> Path:
    """Write the zip VBench's leaderboard (and ``scripts/cal_final_score.py``) reads: top-level
    ``*_eval_results.json`` files ``{dimension: [score, [per-video results]]}`` (underscore names).

    ``results`` a folder: its ``*_eval_results.json`` files go in byte for byte (per-video results
    kept). ``results`` a dict: one ``{name}_eval_results.json`` with ``[score, []]`` per dimension.
    The zip appears atomically (temp file, then os.replace). Returns ``zip_path``.
    """
    zip_path = Path(zip_path)
    if isinstance(results, Mapping):
        _check("VBench", results, tuple(dict.fromkeys(VBENCH_DIMENSIONS + VBENCH_I2V_DIMENSIONS)), True, None)
        if not results:
            raise ValueError("leaderboard zip: no scores to write")
        body = json.dumps({k: [float(v), []] for k, v in results.items()}, indent=2)
        members = [(_member_name(f"{name}_eval_results.json"), body.encode())]
    else:
        folder = Path(results)
        if not folder.is_dir():
            raise NotADirectoryError(f"leaderboard zip: {folder} is not a folder of VBench results")
        read_vbench_results(folder)  # every file must be in VBench's format
        members = [(_member_name(f.name), f.read_bytes()) for f in sorted(folder.glob("*_eval_results.json"))]
    with atomic_file(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, data in members:
                zf.writestr(arcname, data)
    return zip_path


def read_leaderboard_zip(zip_path: str | Path) -> Scores:
    """``{dimension: score}`` from a leaderboard zip by cal_final_score's rule: every top-level entry not
    starting with '.' or '__' that is a ``*json`` file, or a folder whose ``*.json`` files (one level
    down) are read; JSON dicts only (full_info lists are ignored), value[0] per key, later overwrite
    earlier (sorted order; cal_final_score's os.listdir order is arbitrary). Keys stay underscore form.
    """
    zip_path = Path(zip_path)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{zip_path}: not a readable zip ({e})") from None
    scores = Scores(source=str(zip_path))
    with zf:
        files = [n for n in zf.namelist() if not n.endswith("/")]
        top = sorted({n.split("/")[0] for n in zf.namelist()})
        for entry in top:
            if entry.startswith((".", "__")):
                continue
            if entry in files:
                chosen = [entry] if entry.endswith("json") else []
            else:  # a folder: its json files one level down
                chosen = sorted(n for n in files if n.count("/") == 1 and n.startswith(entry + "/")
                                and n.endswith(".json"))
            for member in chosen:
                where = f"{zip_path}!{member}"
                data = _load_json(zf.read(member), where)
                if isinstance(data, dict):
                    scores.update(_dimension_scores(data, where))
    return scores
