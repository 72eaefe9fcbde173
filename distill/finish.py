"""The end of a turbo-train run: what it writes once training is over.

    stages(run)        the teacher at samples.teacher_steps and samples.student_steps, and the
                       student with its objective's sampler: each a turbo.pipeline.Stage
    finish(run)        student/ (LoRA, sampler.json, exports), teacher vs student samples with
                       honest timings, the benchmark (``eval``), curves.png, report.md, DONE

``train.py`` imports it; it reads the ``Run`` that ``distill.train.setup`` built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from distill import fsdp
from distill.checkpoint import TrainingStopped, nonfinite_parameters
from distill.data import collate
from turbo.export import MERGED_DIR, save_merged, save_original_keys
from turbo.lora import save_lora
from turbo.paths import safe_name
from turbo.pipeline import Stage
from turbo.plots import plot_curves
from turbo.sampling import Sampler
from turbo.timing import median_seconds, speedup_bound
from turbo.video import write_video

if TYPE_CHECKING:
    from distill.train import Run


def text_encoder(run: Run):
    """The run's text encoder, built on first use when a cached dataset made training need none."""
    if run.text is None:
        from turbo.config import build

        run.text = build(run.cfg.model.text_encoder, "model.text_encoder").to(run.accelerator.device)
    return run.text


def stages(run: Run) -> dict[str, Stage]:
    """What the end of a run samples, each a ``Stage`` on the run's one denoiser: the teacher with
    CFG at ``samples.teacher_steps`` and at ``samples.student_steps`` (what distillation buys over
    just taking fewer steps) and, when the objective trains one, the student with its own sampler."""
    s = run.cfg.samples
    parts = dict(text=text_encoder(run), vae=run.vae, denoiser=run.denoiser, device=run.accelerator.device, i2v=run.i2v)
    out = {f"teacher, {n} steps, CFG {s.teacher_guidance}":
           Stage(role="teacher", sampler=Sampler("teacher", steps=n, guidance_scale=s.teacher_guidance), **parts)
           for n in dict.fromkeys((s.teacher_steps, s.student_steps))}
    if run.objective.student is not None:
        out[f"student, {s.student_steps} steps"] = Stage(
            role=run.objective.student, sampler=run.objective.sampler(s.student_steps, s.student_guidance), **parts)
    return out


def first_frames(run: Run, n: int) -> tuple[list[str], torch.Tensor | None]:
    """The sample prompts, or for an I2V model the prompts and first frames of the first training items."""
    if run.i2v is None:
        return list(run.cfg.samples.prompts), None
    items = collate([run.dataset[i] for i in range(min(n, len(run.dataset)))])
    return items["prompt"], items["first_frame"] if "first_frame" in items else items["video"][:, 0]


def write_samples(folder, prefix: str, prompts: list[str], videos, fps: float) -> list:
    """One mp4 per prompt: ``folder/<prefix><index>_<prompt>.mp4``."""
    return [write_video(folder / f"{prefix}{i:02d}_{safe_name(p, 60)}.mp4", video, fps=fps)
            for i, (p, video) in enumerate(zip(prompts, videos))]


@torch.no_grad()
def sample_videos(run: Run, stages: dict[str, Stage]) -> dict:
    """Every stage on the sample prompts and seed, timed once for the report and the benchmark: the
    call that made the latents is the warm-up, then the median of 3, seconds per video of sampling
    alone; the VAE decode, the same for all, is timed apart (``decode``). The many-step teacher's and
    the student's videos are written as mp4s. Returns ``{"teacher", "student", "decode", "stages":
    {label: sampling + decode}}``."""
    s, v = run.cfg.samples, run.cfg.video
    prompts, frames = first_frames(run, len(s.prompts))
    labels = list(stages)
    written = {labels[0]: "teacher"}
    if run.objective.student is not None:  # stages() puts the student last
        written[labels[-1]] = "student"
    seconds = {}
    for label, stage in stages.items():
        def sample():
            return stage.latents(prompts, v.num_frames, v.height, v.width, torch.Generator().manual_seed(s.seed),
                                 first_frame=frames)
        latents = sample()  # also the warm-up
        seconds[label] = median_seconds(sample, warmup=0) / len(prompts)
        if label in written:
            write_samples(run.out.path / "samples", f"{written[label]}_", prompts, run.vae.decode(latents), s.fps)
    decode = median_seconds(lambda: run.vae.decode(latents), warmup=0) / len(prompts)
    return {**{who: seconds[label] for label, who in written.items()}, "decode": decode,
            "stages": {label: sec + decode for label, sec in seconds.items()}, "timed_on": len(prompts)}


def videos_of(stage: Stage, video: DictConfig, bench=None):
    """``(prompts, seed) -> B,F,3,H,W`` videos in [0, 1] of ``stage``: what a benchmark samples. An
    I2V stage animates the first frames the benchmark gives for its prompts (``bench.first_frames``)."""
    def generate(prompts, seed):
        frames = bench.first_frames(prompts) if stage.i2v is not None else None
        return stage.video(prompts, video.num_frames, video.height, video.width, torch.Generator().manual_seed(seed),
                           first_frame=frames)
    return generate


@torch.no_grad()
def evaluate(run: Run, stages: dict[str, Stage], seconds: dict) -> tuple[dict, str]:
    """The end-of-run benchmark named by ``eval`` (e.g. ToyBench; eval=none: none) on every stage,
    given the seconds per video that ``sample_videos`` measured. The config names the evaluator, so
    distill/ never imports eval/; any object with ``compare(samplers, out=..., fps=..., nfe=...,
    seconds=..., timed_on=...) -> (results, markdown)`` fits (and, for an I2V model,
    ``first_frames(prompts) -> B,3,H,W``)."""
    if run.bench is None:
        return {}, ""
    samplers = {label: videos_of(stage, run.cfg.video, run.bench) for label, stage in stages.items()}
    nfe = {label: stage.sampler.nfe for label, stage in stages.items()}
    return run.bench.compare(samplers, out=str(run.out.path / "eval"), fps=run.cfg.samples.fps, nfe=nfe,
                             seconds=seconds["stages"], timed_on=seconds["timed_on"])


@torch.no_grad()
def validation_samples(run: Run) -> list:
    """The student's samples now (``samples.every``): ``samples/step_NNNNNN/*.mp4`` on the sample
    prompts and seed, and their first frames to the run's trackers. Returns the files written."""
    s, v = run.cfg.samples, run.cfg.video
    student = list(stages(run).values())[-1]
    prompts, frames = first_frames(run, len(s.prompts))
    videos = student.video(prompts, v.num_frames, v.height, v.width, torch.Generator().manual_seed(s.seed),
                           first_frame=frames)
    files = write_samples(run.out.path / "samples" / f"step_{run.step:06d}", "", prompts, videos, s.fps)
    first = videos[:, 0].float().clamp(0, 1).cpu().numpy()  # N,3,H,W
    for tracker in run.accelerator.trackers:
        images = first if tracker.name == "tensorboard" else list(first.transpose(0, 2, 3, 1))
        tracker.log_images({"samples/first_frames": images}, step=run.step)
    return files


def validate(run: Run) -> dict:
    """During training: every ``eval.every`` steps the validation probe (its ``val/*`` metrics,
    returned), every ``samples.every`` steps the student's samples; on the main process alone
    (a sharded base gathered for it on every process)."""
    every, student = getattr(run.bench, "every", 0), run.objective.student
    probe = every and run.step % every == 0 and student is not None
    samples = run.cfg.samples.every and run.step % run.cfg.samples.every == 0 and student is not None
    metrics = {}
    if probe or samples:
        with fsdp.gathered(run.denoiser, run.accelerator):
            if run.accelerator.is_main_process and probe:
                stage = list(stages(run).values())[-1]
                metrics = {f"val/{k}": v for k, v in run.bench.probe(videos_of(stage, run.cfg.video, run.bench)).items()}
            if run.accelerator.is_main_process and samples:
                validation_samples(run)
    return metrics


def save_student(run: Run, adapter: str, sampler: Sampler) -> None:
    """``student/``: the diffusers LoRA, ``sampler.json`` and the exports ``student.export`` asks for."""
    folder, export = run.out.path / "student", run.cfg.student.export
    save_lora(run.denoiser, adapter, folder, model=run.cfg.model.get("name"))
    sampler.save(folder)
    if export.original_keys:
        save_original_keys(run.denoiser, adapter, folder)
    if export.merged:
        save_merged(run.denoiser, adapter, folder / MERGED_DIR, guidance=sampler.guidance)


def finish(run: Run) -> None:
    if not run.accelerator.is_main_process:
        return
    bad = nonfinite_parameters(run.denoiser, run.objective)
    if bad:  # never save a NaN student (unreachable while non-finite steps are skipped, kept as a guard)
        raise TrainingStopped(f"train: {len(bad)} trained tensors hold non-finite values (first: {bad[0]}); "
                              f"no student written, no DONE; last good checkpoint: {run.out.latest() or 'none'}")
    s = run.cfg.samples
    student = run.objective.student
    if student is not None:
        save_student(run, student, run.objective.sampler(s.student_steps, s.student_guidance))
    run.objective.export(run.out.path)
    end = stages(run)
    timings = sample_videos(run, end)
    results, table = evaluate(run, end, timings)
    plot_curves(run.history, run.out.path / "curves.png")
    if "student" in timings:
        first, last = next(iter(end.values())), list(end.values())[-1]
        timings["speedup"] = timings["teacher"] / timings["student"]
        timings["speedup_bound"] = speedup_bound(first.sampler.nfe, last.sampler.nfe)
    run.out.write_report(run.cfg, run.history, timings, evaluation=table)
    run.out.mark_done({"steps": run.step, "final": run.history[-1] if run.history else {}, "sec_per_video": timings,
                       "eval": results})
