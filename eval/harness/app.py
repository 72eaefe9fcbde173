"""turbo-eval: sample a suite from a teacher or a student, score it, aggregate it (conf/eval.yaml).

    stage=sample      the suite's videos of this shard -> <out>/videos/, <out>/manifest/
    stage=score       every video -> <out>/scores/ (VBench in its own environment; built-in metrics here)
    stage=aggregate   the scores -> <out>/results.json and results.md, with the benchmark's own constants
    stage=all         sample, then score and aggregate once no file of the suite is missing

Each stage reads only what the one before wrote under ``<out>`` (the Hydra run dir), so a SLURM
array can sample shards into one folder and a last job scores the union.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from eval.harness import aggregate as agg
from eval.harness.leaderboard import write_leaderboard_zip
from eval.harness.sample import missing_files, read_manifest, sample_suite
from eval.harness.scoring import score, vbench_env_dir
from eval.harness.suites import (Item, Suite, SuiteError, evalcrafter_items, i2v_ratio, toybench_items,
                                 vbench_i2v_items, vbench_items)
from turbo.atomic import atomic_write_text
from turbo.config import CRF, ConfigError, report_errors

STAGES = ("all", "sample", "score", "aggregate")
SUITES = ("toybench", "vbench", "vbench_i2v", "evalcrafter")


# --- the suite ------------------------------------------------------------------------------------
def build_suite(cfg: DictConfig) -> Suite:
    s, seed = cfg.suite, int(cfg.seed)
    name = s.get("name")
    if name not in SUITES:
        raise ConfigError(f"suite.name={name!r}: choose one of {', '.join(SUITES)} (suite=<name>)")
    dims = None if s.get("dimensions") is None else [str(d) for d in s.dimensions]
    if name == "toybench":
        items = toybench_items(int(s.num_prompts), int(s.videos_per_prompt), seed=seed,
                               split_seed=int(s.split_seed), heldout_fraction=float(s.heldout_fraction))
        return Suite(name, items)
    if name == "vbench":
        if s.full_info is not None:
            full_info = Path(str(s.full_info))
        else:
            from eval.harness.vbench_env import full_info_path

            full_info = full_info_path(vbench_env_dir(cfg))
        flicker = int(s.flicker_per_prompt) if s.static_filter else int(s.videos_per_prompt)
        items = vbench_items(full_info, dims, seed=seed, videos_per_prompt=int(s.videos_per_prompt),
                             flicker_per_prompt=flicker, augmented_prompts=s.augmented_prompts, limit=s.limit)
        return Suite(name, items, {"full_info": str(full_info), "dimensions": dims})
    if name == "vbench_i2v":
        ratio = i2v_ratio(int(cfg.video.width), int(cfg.video.height)) if s.ratio == "auto" else str(s.ratio)
        items = vbench_i2v_items(str(s.data_dir), s.info_json, dims, ratio=ratio, seed=seed,
                                 videos_per_prompt=int(s.videos_per_prompt), limit=s.limit)
        return Suite(name, items, {"ratio": ratio, "dimensions": dims, "data_dir": str(s.data_dir)})
    return Suite(name, evalcrafter_items(str(s.prompts), seed=seed, limit=s.limit))


# --- sample ---------------------------------------------------------------------------------------
def make_generate(cfg: DictConfig, suite: Suite):
    """generate(item) -> F,3,H,W in [0, 1]: the model (teacher or ``lora`` student) with its sampler;
    with ``image_stage.model`` set, the factored pipeline (its first frame, then the I2V ``model``)."""
    from turbo.generate import check_image_stage, load
    from turbo.i2v import load_image
    from turbo.pipeline import t2i2v

    stage = load(cfg)
    v = cfg.video
    f, h, w = int(v.num_frames), int(v.height), int(v.width)
    is_i2v, name = stage.i2v is not None, cfg.model.get("name", "?")
    image_cfg = cfg.get("image_stage")
    factored = image_cfg is not None and image_cfg.get("model") is not None
    if factored:
        if not is_i2v:
            raise ConfigError(f"image_stage.model is the factored pipeline's first-frame stage: model must then be an "
                              f"image-to-video model (one with model.i2v), found model={name}")
        if suite.name == "vbench_i2v":
            raise ConfigError("suite=vbench_i2v gives every video its first frame: unset image_stage.model")
        check_image_stage(image_cfg)
    if suite.name == "vbench_i2v" and not is_i2v:
        raise ConfigError(f"suite=vbench_i2v needs an image-to-video model (one with model.i2v), found model={name}")
    if suite.name in ("vbench", "evalcrafter") and is_i2v and not factored:
        raise ConfigError(f"suite={suite.name} is a text-to-video suite; model={name} is an image-to-video model: "
                          f"set +model@image_stage.model=<a text-to-image model> for the factored pipeline, or use "
                          f"suite=vbench_i2v (or suite=toybench with its true first frames)")
    extra = stage.record()
    if factored:
        image_stage = load(cfg, "image_stage")
        extra["image_stage"] = image_stage.record()

        def generate(item: Item) -> torch.Tensor:
            return t2i2v(image_stage, stage, [item.model_prompt], item.seed, f, h, w, cfg.negative_prompt)[0].cpu()

        return generate, extra
    bench = None
    if suite.name == "toybench" and is_i2v:
        from eval.toybench import ToyBench

        bench = ToyBench(num_prompts=int(cfg.suite.num_prompts), seed=int(cfg.suite.split_seed),
                         heldout_fraction=float(cfg.suite.heldout_fraction), num_frames=f, height=h, width=w)

    def generate(item: Item) -> torch.Tensor:
        first = None
        if item.image is not None:
            first = load_image(item.image, h, w, key=f"the image of {item.file}")[None]
        elif bench is not None:
            first = bench.first_frames([item.prompt], seed=item.seed)
        gen = torch.Generator().manual_seed(item.seed)
        return stage.video([item.model_prompt], f, h, w, gen, cfg.negative_prompt, first)[0].cpu()

    return generate, extra


def sample(cfg: DictConfig, suite: Suite, out: Path):
    from turbo.video import write_video

    CRF.check(cfg.crf, "crf")
    generate, extra = make_generate(cfg, suite)
    report = sample_suite(generate, suite.items, out, shard=int(cfg.shard), num_shards=int(cfg.num_shards),
                          write=lambda path, video: write_video(path, video, fps=float(cfg.fps), crf=cfg.crf),
                          extra=extra)
    print(f"turbo-eval: shard {report.shard}/{report.num_shards}: {report.written} videos written, "
          f"{report.skipped} already there ({report.seconds:.1f} s)")
    return report


# --- aggregate ------------------------------------------------------------------------------------
def aggregate(cfg: DictConfig, suite: Suite, out: Path) -> dict:
    path = out / "scores" / f"{suite.name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scores to aggregate; run stage=score first")
    scores = json.loads(path.read_text())
    dims, partial = scores["dimensions"], bool(cfg.allow_partial)
    if suite.name == "toybench":
        total = scores["toybench"]
    elif suite.name == "vbench":
        total = agg.vbench_total(dims, allow_partial=partial, source=str(path))
    elif suite.name == "vbench_i2v":
        total = agg.vbench_i2v_total(dims, allow_partial=partial, source=str(path))
    else:
        total = agg.evalcrafter_total(dims, allow_partial=partial, source=str(path)) if dims else {}
    if suite.name == "vbench" and (out / "scores" / "vbench").is_dir():
        # the upload VBench's leaderboard takes: its results files, as cal_final_score.py reads them
        write_leaderboard_zip(out / "scores" / "vbench", out / "leaderboard.zip", name=suite.name)
    manifest = read_manifest(out)
    result = {"suite": suite.name, "num_videos": len(suite.items), "dimensions": dims, "aggregate": total,
              "builtin": scores.get("builtin", {}), "partial": bool(total.get("partial", False)),
              "model": next(iter(manifest.values()), {}).get("model"), "lora": cfg.lora,
              "sampler": next(iter(manifest.values()), {}).get("sampler")}
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    atomic_write_text(out / "results.md", results_markdown(result))
    return result


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def results_markdown(result: dict) -> str:
    lines = [f"# {result['suite']}: {result.get('model')}" + (f" + {result['lora']}" if result.get("lora") else ""),
             "", f"{result['num_videos']} videos" + (" — **partial**: some dimensions are missing" if result["partial"] else ""),
             "", "| dimension | score |", "|---|---|"]
    lines += [f"| {d} | {_fmt(v)} |" for d, v in result["dimensions"].items()]
    lines += [f"| {k} (built-in) | {_fmt(v)} |" for k, v in result["builtin"].items()]
    lines += [f"| **{k}** | **{_fmt(v)}** |" for k, v in result["aggregate"].items()
              if isinstance(v, (int, float)) or v is None]
    return "\n".join(lines) + "\n"


def check_partial(cfg: DictConfig, suite: Suite) -> None:
    """A dimension subset cannot make a Total; say so before sampling, not after scoring."""
    dims = suite.options.get("dimensions")
    full = {"vbench": agg.VBENCH_DIMENSIONS, "vbench_i2v": agg.VBENCH_I2V_DIMENSIONS}.get(suite.name)
    if full is not None and dims is not None and set(full) - set(dims) and not cfg.allow_partial:
        raise ConfigError(f"suite.dimensions lists {len(dims)} of {suite.name}'s {len(full)} dimensions: its totals "
                          f"would be partial; set allow_partial=true to score a subset (the result says partial)")


# --- the app --------------------------------------------------------------------------------------
def run(cfg: DictConfig, out: Path) -> dict | None:
    stage = cfg.stage
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: choose one of {', '.join(STAGES)}")
    if cfg.setup is not None:
        if cfg.setup != "vbench":
            raise ConfigError(f"setup={cfg.setup!r}: the one environment turbo-eval sets up is vbench")
        from eval.harness.vbench_env import setup

        print(f"turbo-eval: vbench environment ready: {setup(vbench_env_dir(cfg))}")
        return None
    try:
        suite = build_suite(cfg)
    except SuiteError as e:
        raise ConfigError(str(e)) from None
    check_partial(cfg, suite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps({"name": suite.name, "options": suite.options,
                                                "config": OmegaConf.to_container(cfg.suite, resolve=True)}, indent=1))
    if stage in ("all", "sample"):
        sample(cfg, suite, out)
        missing = missing_files(suite.items, out)
        if stage == "sample" or missing:
            if missing:
                print(f"turbo-eval: {len(missing)} files of other shards are still missing; run stage=score when "
                      f"every shard has finished")
            return None
    if stage in ("all", "score"):
        score(cfg, suite, out)
    result = aggregate(cfg, suite, out)
    print(result_line(result))
    return result


def result_line(result: dict) -> str:
    parts = [f"{k} {v:.4f}" for k, v in result["aggregate"].items() if isinstance(v, float)]
    return f"turbo-eval: {result['suite']}: " + (", ".join(parts) or "scored") + (" (partial)" if result["partial"] else "")


@hydra.main(config_path="pkg://conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from eval.harness.vbench_env import VBenchEnvError

    out = Path(HydraConfig.get().runtime.output_dir)
    report_errors("turbo-eval", lambda: run(cfg, out), (VBenchEnvError, agg.MissingDimension))


if __name__ == "__main__":
    main()
