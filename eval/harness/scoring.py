"""turbo-eval's score stage: every file of a suite -> ``<out>/scores/<suite>.json``.

ToyBench in this process; VBench (and VBench-I2V, VBench-Long) by its own code in the vbench
environment (eval/harness/vbench_env.py); EvalCrafter by its own start.sh from a local checkout;
the built-in metrics (eval/harness/metrics.py) in this process, per video.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from eval.harness import aggregate as agg
from eval.harness.sample import missing_files
from eval.harness.suites import Suite
from turbo.atomic import atomic_write_text
from turbo.config import ConfigError


def vbench_env_dir(cfg: DictConfig) -> Path:
    from eval.harness.vbench_env import default_env

    return Path(str(cfg.vbench.env)) if cfg.vbench.env is not None else default_env()


def _videos_by_prompt(suite: Suite, out: Path) -> dict[str, list[torch.Tensor]]:
    from turbo.video import read_video

    videos: dict[str, list[torch.Tensor]] = {}
    for item in suite.items:
        videos.setdefault(item.prompt, []).append(read_video(out / "videos" / item.file)[0])
    return videos


def score(cfg: DictConfig, suite: Suite, out: Path) -> dict:
    """Score every file of the suite; write and return ``<out>/scores/<suite>.json`` ({"dimensions": ...})."""
    missing = missing_files(suite.items, out)
    if missing:
        raise FileNotFoundError(f"{out / 'videos'}: {len(missing)} of the suite's {len(suite.items)} files are missing "
                                f"(e.g. {missing[0]!r}); sample them first (stage=sample, every shard)")
    scores_dir = out / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    if suite.name == "toybench":
        from eval.toybench import ToyBench

        v = cfg.video
        bench = ToyBench(num_prompts=int(cfg.suite.num_prompts), seed=int(cfg.suite.split_seed),
                         heldout_fraction=float(cfg.suite.heldout_fraction), num_frames=int(v.num_frames),
                         height=int(v.height), width=int(v.width))
        r = bench.evaluate(_videos_by_prompt(suite, out))
        result = {"dimensions": r.raw, "normalized": r.scores, "per_prompt": r.per_prompt,
                  "toybench": {"Quality": r.quality, "Semantic": r.semantic, "Total": r.total,
                               "frechet_distance": r.frechet_distance}}
    elif suite.name in ("vbench", "vbench_i2v"):
        result = score_vbench(cfg, suite, out)
    else:
        result = {"dimensions": {}}
        if cfg.suite.checkout is not None:
            result = {"dimensions": run_evalcrafter(cfg, out), "source": str(cfg.suite.checkout)}
    builtin = builtin_metrics(cfg, suite, out)
    if builtin:
        result["builtin"] = builtin
    atomic_write_text(scores_dir / f"{suite.name}.json", json.dumps(result, indent=1))
    return result


def is_long(cfg: DictConfig) -> bool:
    """suite.long: true | false | auto (VBench-Long for videos of 5 s or more, as VBench's FAQ asks)."""
    long = cfg.suite.get("long", False)
    if long == "auto":
        return int(cfg.video.num_frames) / float(cfg.fps) >= 5.0
    if not isinstance(long, bool):
        raise ConfigError(f"suite.long must be true, false or auto, found {long!r}")
    return long


def score_vbench(cfg: DictConfig, suite: Suite, out: Path) -> dict:
    """VBench's own code in the vbench environment; every results file lands in <out>/scores/vbench/.
    With suite.static_filter, temporal_flickering is scored on the first 5 static videos of each of
    its prompts' 25 (VBench's static filter) and the other dimensions on the videos as sampled."""
    from eval.harness.vbench_env import score as vbench_score
    from eval.harness.vbench_env import static_filter

    vbench_dir = out / "scores" / "vbench"
    dims = suite.options["dimensions"] or list(agg.VBENCH_DIMENSIONS if suite.name == "vbench"
                                               else agg.VBENCH_I2V_DIMENSIONS)
    common = {"env": vbench_env_dir(cfg), "mode": "vbench_standard", "device": str(cfg.vbench.device),
              "cache_dir": None if cfg.vbench.cache_dir is None else Path(str(cfg.vbench.cache_dir))}
    if suite.name == "vbench_i2v":
        ratio = suite.options["ratio"]
        info = Path(str(cfg.suite.info_json)) if cfg.suite.info_json is not None else \
            Path(suite.options["data_dir"]) / "vbench2_i2v_full_info.json"
        vbench_score(out / "videos", vbench_dir, dims, name=suite.name, i2v=True, resolution=ratio, full_info=info,
                     image_folder=Path(suite.options["data_dir"]) / "crop" / ratio, **common)
        return {"dimensions": agg.read_vbench_results(vbench_dir), "source": str(vbench_dir)}
    full_info = Path(suite.options["full_info"])
    if is_long(cfg):  # VBench-Long: one call; it splits the videos into clips and has its own static filter
        vbench_score(out / "videos", vbench_dir, dims, name=suite.name, full_info=full_info, long=True,
                     static_filter=bool(cfg.suite.static_filter), videos_per_prompt=int(cfg.suite.videos_per_prompt),
                     **{**common, "mode": "long_vbench_standard"})
        return {"dimensions": agg.read_vbench_results(vbench_dir), "source": str(vbench_dir), "long": True}
    notes = {}
    if cfg.suite.static_filter and "temporal_flickering" in dims:
        files = [i.file for i in suite.items if "temporal_flickering" in i.dimensions]
        filtered, kept = static_filter(out / "videos", out / "scores" / "static_filter", files,
                                       env=common["env"], device=common["device"], cache_dir=common["cache_dir"])
        short = {p: n for p, n in kept.items() if n < 5}
        few = sorted({i.prompt for i in suite.items if "temporal_flickering" in i.dimensions} - set(kept))
        notes["static_filter"] = {"kept": kept, "fewer_than_5": {**short, **{p: 0 for p in few}}}
        vbench_score(filtered, vbench_dir, ["temporal_flickering"], name=f"{suite.name}_temporal_flickering",
                     full_info=full_info, **common)
        dims = [d for d in dims if d != "temporal_flickering"]
    if dims:
        vbench_score(out / "videos", vbench_dir, dims, name=suite.name, full_info=full_info, **common)
    return {"dimensions": agg.read_vbench_results(vbench_dir), "source": str(vbench_dir), **notes}


def run_evalcrafter(cfg: DictConfig, out: Path) -> dict[str, float]:
    """EvalCrafter's metrics from a local checkout (its start.sh, in its own environment), parsed as
    its eval_from_metrics.py parses them."""
    import os
    import subprocess

    checkout = Path(str(cfg.suite.checkout))
    script = checkout / "start.sh"
    if not script.is_file():
        raise FileNotFoundError(f"suite.checkout={checkout}: no start.sh (an EvalCrafter checkout has one)")
    env = dict(os.environ)
    if cfg.suite.python is not None:
        env["PATH"] = f"{Path(str(cfg.suite.python)).parent}{os.pathsep}{env['PATH']}"
    log = out / "scores" / "evalcrafter.log"
    with open(log, "w") as f:
        rc = subprocess.run(["bash", str(script), str(checkout), str((out / "videos").resolve())], cwd=checkout,
                            stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"EvalCrafter's start.sh exited {rc}; its output is in {log}")
    return agg.parse_evalcrafter_logs(checkout / "results")


BUILTIN = ("temporal_flickering", "clip_score", "rewards", "fvd")  # ToyBench is a suite (suite=toybench)


def builtin_metrics(cfg: DictConfig, suite: Suite, out: Path) -> dict:
    """The ``metrics`` list: per-video scores -> <out>/scores/builtin.jsonl, their means returned.
    ``rewards``: every term of the ``rewards`` mixture, one column each (``rewards/<term>``); ``fvd``:
    a set statistic against ``fvd.reference`` (a folder of real mp4s), in the summary only."""
    names = [str(m) for m in cfg.metrics]
    if not names:
        return {}
    unknown = sorted(set(names) - set(BUILTIN))
    if unknown:
        raise ConfigError(f"metrics: {unknown} are not built-in metrics; choose from {list(BUILTIN)}")
    from eval.harness import metrics as m
    from turbo.config import build
    from turbo.video import read_video

    videos = [read_video(out / "videos" / item.file)[0] for item in suite.items]
    prompts = [item.prompt for item in suite.items]
    per: dict[str, list[float]] = {}
    summary: dict[str, float] = {}
    for name in names:
        if name == "temporal_flickering":
            per[name] = [m.temporal_flickering(v) for v in videos]
        elif name == "clip_score":
            if cfg.clip.pretrained is None:
                raise ConfigError("metrics=[clip_score] needs clip.pretrained=<a local open_clip checkpoint>")
            per[name] = m.ClipScore(str(cfg.clip.model_name), str(cfg.clip.pretrained),
                                    convention=str(cfg.clip.convention)).score(videos, prompts)
        elif name == "rewards":
            mixture = build(cfg.rewards, "rewards")
            if not mixture.terms:
                raise ConfigError("metrics=[rewards] needs reward models: set rewards=<a reward config>, e.g. "
                                  "reward@rewards=toy")
            scores = m.RewardScores({t.name: t.model for t in mixture.terms},
                                    {t.name: t.num_frames for t in mixture.terms}).score(videos, prompts)
            per.update({f"rewards/{term}": values for term, values in scores.items()})
        else:
            if cfg.fvd.i3d is None or cfg.fvd.reference is None:
                raise ConfigError("metrics=[fvd] needs fvd.i3d=<a local I3D state dict> and fvd.reference=<a folder "
                                  "of real mp4s>")
            reference = sorted(Path(str(cfg.fvd.reference)).glob("*.mp4"))
            if len(reference) < 2:
                raise FileNotFoundError(f"fvd.reference={cfg.fvd.reference}: expected a folder with 2 or more mp4s, "
                                        f"found {len(reference)}")
            summary[name] = m.FVD(str(cfg.fvd.i3d), key="fvd.i3d").score_set(
                videos, [read_video(path)[0] for path in reference])
    rows = [{"file": item.file, "prompt": item.prompt, **{n: float(v[i]) for n, v in per.items()}}
            for i, item in enumerate(suite.items)]
    atomic_write_text(out / "scores" / "builtin.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return {**{n: float(sum(v) / len(v)) for n, v in per.items()}, **summary}
