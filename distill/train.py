"""``turbo-train``: distil a teacher into a few-step LoRA student. Reads top to bottom:

    setup()  config -> models, objective, reward feedback, data, optimizers (one shared base)
    train()  for each step: batch -> for each group the objective schedules (student, critic):
             its loss (+ reward feedback for the student) -> backward -> clip -> step
             -> metrics line -> checkpoint (atomic)
    finish() final LoRA, teacher vs student samples (mp4), report.md, DONE marker

Randomness: every step draws from a generator seeded by (seed, step, rank) and the data order is
a permutation seeded by (seed, epoch), so a resumed run replays exactly the steps an
uninterrupted one would have taken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from distill.checkpoint import RunDir
from distill.data import collate
from distill.feedback import RewardFeedback
from distill.objectives.base import Batch, Objective, group_loss
from turbo.config import ConfigError, build
from turbo.denoiser import Denoiser
from turbo.i2v import ImageConditioner, build_i2v
from turbo.lora import save_lora
from turbo.sampling import sample_teacher
from turbo.text import TextEncoder
from turbo.vae import VideoVAE
from turbo.video import write_video

TOP_LEVEL_KEYS = {"model", "objective", "reward", "data", "video", "seed", "device", "precision", "resume",
                  "overwrite", "student", "train", "samples", "eval"}


@dataclass
class Run:
    cfg: DictConfig
    out: RunDir
    accelerator: Accelerator
    text: TextEncoder
    vae: VideoVAE
    denoiser: Denoiser
    objective: Objective
    feedback: RewardFeedback
    dataset: torch.utils.data.Dataset
    optimizers: dict[str, torch.optim.Optimizer]
    step: int = 0
    history: list[dict] = field(default_factory=list)
    i2v: ImageConditioner | None = None  # model.i2v: first frame -> image latents / tokens


# --- setup -------------------------------------------------------------------------------------
def setup(cfg: DictConfig, run_dir: Path) -> Run:
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; turbo-train reads {sorted(TOP_LEVEL_KEYS)}")
    out = RunDir(run_dir)
    out.claim(resume=cfg.resume, overwrite=cfg.overwrite)
    accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.precision)
    device = accelerator.device

    m = cfg.model
    text = build(m.text_encoder, "model.text_encoder").to(device)
    vae = build(m.vae, "model.vae").to(device)
    schedule = build(m.schedule, "model.schedule")
    denoiser = Denoiser(build(m.backbone, "model.backbone"), schedule, m.family, m.get("time_embedding_module"))
    denoiser.add_adapter("student", rank=cfg.student.rank, alpha=cfg.student.alpha,
                         target_modules=list(cfg.student.target_modules), dropout=cfg.student.dropout,
                         guidance_embedding=cfg.student.guidance_embedding)
    denoiser.to(device)
    objective = build(cfg.objective, "objective", denoiser=denoiser)
    feedback = RewardFeedback(build(cfg.reward, "reward").to(device), vae)

    dataset = build(cfg.data, "data")
    if objective.needs_videos and not dataset.has_videos:
        raise ConfigError(f"objective={objective.name} needs real videos, but data ({type(dataset).__name__}) "
                          f"gives prompts only")
    vae.check_video_size(cfg.video.num_frames, cfg.video.height, cfg.video.width, key="video")
    text(list(cfg.samples.prompts))  # a prompt the text encoder refuses (toy: outside the grammar) fails now, not at the end
    i2v = build_i2v(m.get("i2v"), vae, denoiser.backbone)
    if i2v is not None and cfg.get("eval") is not None:
        raise ConfigError("eval: the end-of-run benchmark samples from prompts alone, but an I2V model (model.i2v) "
                          "needs first frames: run it with eval=null")
    if i2v is not None and not dataset.has_videos:
        raise ConfigError(f"model.i2v: an I2V student is conditioned on the first frame of each training video, "
                          f"but data ({type(dataset).__name__}) gives prompts only")

    optimizers = make_optimizers(objective, accelerator)
    run = Run(cfg, out, accelerator, text, vae, denoiser, objective, feedback, dataset, optimizers, i2v=i2v)
    if cfg.resume:
        run.step = out.load_latest(denoiser, objective, optimizers)
        run.history = out.read_metrics(upto=run.step)
    out.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    return run


def load_batch(run: Run, step: int) -> Batch:
    """The batch of ``step``: a fixed slice of an epoch permutation seeded by (seed, epoch); each
    process takes its own share of it."""
    n, bs = len(run.dataset), run.cfg.train.batch_size
    per_epoch = max(1, n // bs)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(run.cfg.seed * 100_003 + epoch))
    idx = order[i * bs:(i + 1) * bs].tolist()[run.accelerator.process_index::run.accelerator.num_processes]
    items = collate([run.dataset[j] for j in idx])
    prompts = items["prompt"]
    device = run.accelerator.device
    latents = run.vae.encode(items["video"].to(device)) if "video" in items else None
    v = run.cfg.video
    shape = run.vae.latent_shape(v.num_frames, v.height, v.width)
    cond, uncond = run.text(prompts), run.text([""] * len(prompts))
    if run.i2v is not None:  # I2V: the clean video's first frame conditions both CFG halves (as Wan's pipeline)
        cond, uncond = run.i2v.apply([cond, uncond], items["video"][:, 0].to(device), v.num_frames,
                                     first_latent=latents[:, :, :1])
    return Batch(prompts, cond, uncond, shape, latents)


def step_generator(run: Run, step: int) -> torch.Generator:
    seed = (run.cfg.seed * 1_000_003 + step) * 64 + run.accelerator.process_index
    return torch.Generator().manual_seed(seed)


# --- one optimisation step ----------------------------------------------------------------------
def make_optimizers(objective: Objective, accelerator: Accelerator) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per trainable group, with the objective's settings for it."""
    optimizers = {}
    for group, params in objective.trainable().items():
        o = objective.optim[group]
        optimizers[group] = accelerator.prepare(
            torch.optim.AdamW(params, lr=o["lr"], betas=o["betas"], weight_decay=o["weight_decay"]))
    return optimizers


def optimise(objective: Objective, optimizers: dict, accelerator: Accelerator, group: str, losses,
             metrics: dict) -> None:
    """Backward the summed loss, average gradients over processes, clip, step ``group``."""
    params = objective.trainable()[group]
    optimizers[group].zero_grad(set_to_none=True)
    total = losses.total()
    accelerator.backward(total)
    # The objectives call the denoiser many times per step in several roles, which does not fit
    # DDP's one-forward contract, so gradients are averaged explicitly (a no-op on one process).
    if accelerator.num_processes > 1:
        for p in params:
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, reduction="mean")
    norm = torch.nn.utils.clip_grad_norm_(params, objective.optim[group]["grad_clip"])
    optimizers[group].step()
    objective.after_step(group)
    metrics[f"{group}/loss"] = float(total.detach())
    metrics[f"{group}/grad_norm"] = float(norm)
    metrics.update({k: float(v.detach()) for k, v in losses.terms.items()})


def train_step(run: Run, step: int) -> dict:
    """One iteration: each group the objective schedules for this step gets its loss and its
    optimizer step; reward feedback joins the student's loss."""
    metrics: dict = {"step": step + 1}
    gen = step_generator(run, step)
    batch = load_batch(run, step)
    for group in run.objective.updates(step):
        with run.accelerator.autocast():
            losses = group_loss(run.objective, group, batch, step, gen)
            if run.feedback and losses.x0 is not None:  # the student's single-step prediction
                reward = run.feedback(losses.x0, batch.prompts, gen)
                losses.terms.update({f"reward/{k}": v for k, v in reward.terms.items()})
                metrics.update({f"score/{k}": float(v.mean()) for k, v in reward.scores.items()})
        optimise(run.objective, run.optimizers, run.accelerator, group, losses, metrics)
    return metrics


def train(run: Run) -> None:
    cfg = run.cfg.train
    bar = tqdm(range(run.step, cfg.steps), initial=run.step, total=cfg.steps, desc="train",
               disable=not run.accelerator.is_main_process)
    for step in bar:
        t0 = time.perf_counter()
        metrics = train_step(run, step)
        metrics["sec"] = round(time.perf_counter() - t0, 4)
        run.step = step + 1
        run.history.append(metrics)
        if run.accelerator.is_main_process:
            run.out.append_metrics(metrics)
            first = next((k for k in metrics if k.endswith("/loss")), None)
            if first:
                bar.set_postfix({first: f"{metrics[first]:.4f}"})
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                run.out.save_checkpoint(run.step, run.denoiser, run.objective, run.optimizers, keep=cfg.keep_checkpoints)


# --- the end of a run ---------------------------------------------------------------------------
@torch.no_grad()
def sample_videos(run: Run) -> dict:
    """Teacher (CFG, many steps) and student (few steps) on the same prompts and seed. Returns
    seconds per video of the sampling loop alone (the VAE decode, the same for both, is apart)."""
    s, v = run.cfg.samples, run.cfg.video
    shape = run.vae.latent_shape(v.num_frames, v.height, v.width)
    prompts = list(s.prompts)
    cond, uncond = run.text(prompts), run.text([""] * len(prompts))
    if run.i2v is not None:  # I2V: the first frames (and prompts) of the first training items
        items = collate([run.dataset[i] for i in range(min(len(prompts), len(run.dataset)))])
        prompts = items["prompt"]
        cond, uncond = run.i2v.apply([run.text(prompts), run.text([""] * len(prompts))],
                                     items["video"][:, 0].to(run.accelerator.device), v.num_frames)
    samplers = {
        "teacher": lambda gen: sample_teacher(run.denoiser, cond, uncond, shape, s.teacher_steps,
                                              s.teacher_guidance, gen),
        "student": lambda gen: run.objective.sample(cond, shape, s.student_steps, gen, guidance=s.student_guidance),
    }
    timings = {}
    for who, sample in samplers.items():
        t0 = time.perf_counter()
        latents = sample(torch.Generator().manual_seed(s.seed))
        timings[who] = (time.perf_counter() - t0) / len(prompts)
        t0 = time.perf_counter()
        videos = run.vae.decode(latents)
        timings["decode"] = (time.perf_counter() - t0) / len(prompts)
        for i, (prompt, video) in enumerate(zip(prompts, videos)):
            write_video(run.out.path / "samples" / f"{who}_{i:02d}_{prompt.replace(' ', '_')[:60]}.mp4", video, fps=s.fps)
    return timings


@torch.no_grad()
def evaluate(run: Run) -> tuple[dict, str]:
    """The end-of-run benchmark named by ``eval`` (e.g. ToyBench; null = none): the teacher with CFG
    at ``samples.teacher_steps`` and at ``samples.student_steps`` against the student at
    ``samples.student_steps`` (what distillation buys over just taking fewer steps), decoded
    videos B,F,3,H,W in [0, 1] from each. The config names the evaluator, so distill/ never
    imports eval/; any object with ``compare(samplers, out=...) -> (results, markdown)`` fits."""
    if run.cfg.get("eval") is None:
        return {}, ""

    bench = build(run.cfg.eval, "eval")
    s, v = run.cfg.samples, run.cfg.video
    shape = run.vae.latent_shape(v.num_frames, v.height, v.width)

    def teacher(prompts: list[str], seed: int, steps: int = s.teacher_steps):
        latents = sample_teacher(run.denoiser, run.text(prompts), run.text([""] * len(prompts)), shape,
                                 steps, s.teacher_guidance, torch.Generator().manual_seed(seed))
        return run.vae.decode(latents)

    def student(prompts: list[str], seed: int):
        latents = run.objective.sample(run.text(prompts), shape, s.student_steps, torch.Generator().manual_seed(seed),
                                       guidance=s.student_guidance)
        return run.vae.decode(latents)

    samplers = {f"teacher, {s.teacher_steps} steps, CFG {s.teacher_guidance}": teacher,
                f"teacher, {s.student_steps} steps, CFG {s.teacher_guidance}":
                    lambda prompts, seed: teacher(prompts, seed, s.student_steps)}
    if "student" in run.objective.trainable():
        samplers[f"student, {s.student_steps} steps"] = student
    return bench.compare(samplers, out=str(run.out.path / "eval"), fps=s.fps)


def finish(run: Run) -> None:
    if not run.accelerator.is_main_process:
        return
    if "student" in run.objective.trainable():
        save_lora(run.denoiser, "student", run.out.path / "student")
    run.objective.export(run.out.path)
    timings = sample_videos(run)
    results, table = evaluate(run)
    run.out.write_report(run.cfg, run.history, timings, evaluation=table)
    run.out.mark_done({"steps": run.step, "final": run.history[-1] if run.history else {}, "sec_per_video": timings,
                       "eval": results})


def run_training(cfg: DictConfig, run_dir: Path) -> Run:
    torch.manual_seed(cfg.seed)
    run = setup(cfg, run_dir)
    train(run)
    finish(run)
    return run


@hydra.main(config_path="pkg://conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run = run_training(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(f"run directory: {run.out.path}")


if __name__ == "__main__":
    main()
