"""``turbo-train``: distil a teacher into a few-step LoRA student. Reads top to bottom:

    setup()  config -> models, objective, reward feedback, data, optimizers (one shared base)
    train()  for each step: batch -> for each group the objective schedules (student, critic):
             its loss (+ reward feedback for the student) -> backward -> clip -> step
             -> metrics line -> checkpoint (atomic)
    finish() final LoRA + sampler.json, teacher vs student samples (mp4), benchmark, report.md, DONE
             (distill/finish.py)

Randomness: every step draws from a generator seeded by (seed, step, rank) and the data order is
a permutation seeded by (seed, epoch), so a resumed run replays exactly the steps an
uninterrupted one would have taken.

What cannot take a run over: a config key that does not exist or a value out of range (refused
before anything is built, distill/schema.py); a second run on the same folder (a PID lock); a
resume with a changed config (refused unless ``resume_allow``); a non-finite loss or gradient (the
step is skipped and counted; ``train.max_nonfinite_steps`` in a row stop the run without DONE);
an unreadable video (skipped, counted and the batch refilled deterministically).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from distill import fsdp
from distill.checkpoint import RunDir, TrainingStopped, app_defaults, flatten
from distill.data import StepBatches, step_loader
from distill.feedback import RewardFeedback
from distill.finish import finish, stages, validate  # noqa: F401 (stages: the end-of-run Stages, for tests)
from distill.objectives.base import Batch, Objective, group_loss
from distill.schema import RESUME_FREE, TRAIN
from turbo.config import ConfigError, build, check_config, report_errors
from turbo.denoiser import Denoiser
from turbo.i2v import ImageConditioner
from turbo.pipeline import build_model
from turbo.sampling import Rows
from turbo.text import TextCond, TextEncoder
from turbo.vae import VideoVAE
from turbo.plots import plot_curves


@dataclass
class Run:
    cfg: DictConfig
    out: RunDir
    accelerator: Accelerator
    text: TextEncoder | None  # None while a cached dataset makes it unneeded (distill.finish.text_encoder)
    vae: VideoVAE
    denoiser: Denoiser
    objective: Objective
    feedback: RewardFeedback
    dataset: torch.utils.data.Dataset
    optimizers: dict[str, torch.optim.Optimizer]
    step: int = 0
    history: list[dict] = field(default_factory=list)
    i2v: ImageConditioner | None = None  # model.i2v: first frame -> image latents / tokens
    bench: object | None = None  # the run's benchmark (``eval``): compare() at the end, probe() every eval.every steps
    bad_items: dict[int, str] = field(default_factory=dict)  # dataset index -> why it was skipped
    nonfinite: int = 0          # optimizer steps skipped for a non-finite loss or gradient, in all
    nonfinite_in_a_row: int = 0

    def loop_state(self) -> dict:
        return {"bad_items": {int(k): v for k, v in self.bad_items.items()}, "nonfinite": self.nonfinite,
                "nonfinite_in_a_row": self.nonfinite_in_a_row}


# --- setup -------------------------------------------------------------------------------------
def make_accelerator(cfg: DictConfig, run_dir: Path | None = None) -> Accelerator:
    cuda = torch.cuda.is_available()
    if cfg.device.startswith("cuda") and not cuda:
        raise ConfigError(f"device={cfg.device}: no CUDA device is visible here; use device=auto or device=cpu")
    if cfg.precision == "fp16" and (cfg.device == "cpu" or not cuda):
        raise ConfigError("precision=fp16 is not supported on a CPU (accelerate would silently train in fp32); "
                          "use precision=no or precision=bf16")
    # device=auto on a machine without CUDA under torchrun: accelerate sets up the gloo process group
    # only when told cpu=True; without it each process runs alone and all fight over one run folder
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and launched and not cuda)
    return Accelerator(cpu=cpu, mixed_precision=cfg.precision,
                       log_with=None if cfg.tracker == "none" else cfg.tracker,
                       project_dir=None if run_dir is None else str(Path(run_dir) / "trackers"))


def setup(cfg: DictConfig, run_dir: Path) -> Run:
    check_config(cfg, TRAIN)
    out = RunDir(run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    resume, overwrite = out.resolve_resume(cfg.resume, cfg.overwrite)  # every process decides alike
    if accelerator.is_main_process:
        out.lock()
        out.claim(resume=resume, overwrite=overwrite)
        if resume:
            out.check_resume_config(OmegaConf.to_container(cfg, resolve=True), RESUME_FREE, list(cfg.resume_allow),
                                    defaults=app_defaults())
    accelerator.wait_for_everyone()
    device = accelerator.device

    dataset = build(cfg.data, "data")
    # a cached dataset holds the prompts' encodings: the text encoder is loaded only when the end
    # of the run (or the validation probe) samples (distill.finish.text_encoder)
    text, vae, denoiser, i2v = build_model(cfg.model, device, text=not getattr(dataset, "cached", False))
    denoiser.store_base(cfg.base_dtype)  # before the adapters: they stay float32
    if cfg.train.gradient_checkpointing:
        try:
            denoiser.enable_gradient_checkpointing()
        except ValueError as e:
            raise ConfigError(f"train.gradient_checkpointing=true: {e}") from None
    # the objective adds the adapters it trains (the student from `student`, a critic, an EMA target)
    adapter = {k: v for k, v in OmegaConf.to_container(cfg.student).items() if k != "export"}
    objective = build(cfg.objective, "objective", denoiser=denoiser, adapter=adapter)
    denoiser.to(device)
    terms = [k for k in cfg.reward if not str(k).startswith("_")]
    if terms and not getattr(objective, "feeds_rewards", True):
        raise ConfigError(f"reward: objective={objective.name} makes no student prediction for reward feedback to "
                          f"score, so reward terms {terms} would do nothing; use reward=none")
    feedback = RewardFeedback(build(cfg.reward, "reward").to(device), vae)

    if objective.needs_videos and not dataset.has_videos:
        raise ConfigError(f"objective={objective.name} needs real videos, but data ({type(dataset).__name__}) "
                          f"gives prompts only")
    vae.check_video_size(cfg.video.num_frames, cfg.video.height, cfg.video.width, key="video")
    if text is not None:  # a prompt the text encoder refuses (toy: outside the grammar) fails now, not at the end
        text(list(cfg.samples.prompts))
    if i2v is not None and not dataset.has_videos:
        raise ConfigError(f"model.i2v: an I2V student is conditioned on the first frame of each training video, "
                          f"but data ({type(dataset).__name__}) gives prompts only")

    bench = build(cfg.eval, "eval") if cfg.get("eval") else None  # eval=none: an empty node
    if i2v is not None and bench is not None and not hasattr(bench, "first_frames"):
        raise ConfigError(f"eval: an I2V model (model.i2v) animates first frames, and {type(bench).__name__} gives "
                          f"none (it has no first_frames(prompts)): run it with eval=none")
    resumed = out.load_latest(denoiser, objective) if resume else None  # into plain tensors: before sharding
    if cfg.train.fsdp:
        fsdp.shard(denoiser, cfg, objective.name, accelerator.num_processes)
    optimizers = make_optimizers(objective, accelerator)
    run = Run(cfg, out, accelerator, text, vae, denoiser, objective, feedback, dataset, optimizers, i2v=i2v, bench=bench)
    if resumed:
        run.step, loop, states = resumed
        for k, opt in optimizers.items():
            fsdp.load_optimizer_state(opt, states[k])
        run.bad_items = {int(k): v for k, v in loop.get("bad_items", {}).items()}
        run.nonfinite, run.nonfinite_in_a_row = int(loop.get("nonfinite", 0)), int(loop.get("nonfinite_in_a_row", 0))
        run.history = out.read_metrics(upto=run.step)
    out.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.tracker != "none":  # hyperparameters: the config's scalar leaves
        scalars = {k: v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
                   if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("turbo", config=scalars)
    return run


def step_batches(run: Run) -> StepBatches:
    """This process's share of every step's batch (distill.data.StepBatches)."""
    acc = run.accelerator
    return StepBatches(run.dataset, run.cfg.train.batch_size, run.cfg.seed, acc.process_index, acc.num_processes,
                       run.bad_items)


def load_batch(run: Run, step: int, drawn: dict | None = None) -> Batch:
    """The batch of ``step`` (``drawn``: what the DataLoader prepared for it, else drawn here):
    unusable items it met are recorded and logged, then videos go through the VAE and prompts
    through the text encoder, in this process (on its device)."""
    drawn = step_batches(run)[step] if drawn is None else drawn
    new = {j: why for j, why in drawn["bad"].items() if j not in run.bad_items}
    run.bad_items.update(new)
    if new and run.accelerator.is_main_process:
        name = getattr(run.dataset, "name", str)
        run.out.log_skipped([f"step {step + 1}\t{j}\t{name(j)}\t{why}" for j, why in new.items()])
    n, limit = len(run.dataset), getattr(run.dataset, "max_skip_fraction", 0.0)
    if len(run.bad_items) > limit * n:
        raise TrainingStopped(f"data: {len(run.bad_items)} of {n} videos are unusable, more than "
                              f"data.max_skip_fraction={limit} allows (see {run.out.path / 'data_skipped.log'})")
    items = drawn["items"]
    prompts = items["prompt"]
    device = run.accelerator.device
    v = run.cfg.video
    shape = run.vae.latent_shape(v.num_frames, v.height, v.width)
    if "latents" in items:  # data=cached: turbo-cache encoded them with this model's VAE and text encoder
        latents = items["latents"].to(device)
        cond = TextCond(**items["text"]).to(device)
        uncond = run.dataset.uncond.to(device).repeat(len(prompts))
        first = items.get("first_frame")
    else:
        latents = run.vae.encode(items["video"].to(device)) if "video" in items else None
        cond, uncond = run.text(prompts), run.text([""] * len(prompts))
        first = items["video"][:, 0] if "video" in items else None
    if run.i2v is not None:  # I2V: the clean video's first frame conditions both CFG halves (as Wan's pipeline)
        cond, uncond = run.i2v.apply([cond, uncond], first.to(device), v.num_frames, first_latent=latents[:, :, :1])
    acc = run.accelerator
    rows = Rows(acc.process_index, acc.num_processes, run.cfg.train.batch_size)
    return Batch(prompts, cond, uncond, shape, latents, rows=rows)


def step_generator(run: Run, step: int) -> torch.Generator:
    """The step's generator, the same on every process: per-row draws go through ``Batch.rows``, so
    a run on N processes draws what one process draws for the same global batch."""
    return torch.Generator().manual_seed((run.cfg.seed * 1_000_003 + step) * 64)


# --- one optimisation step ----------------------------------------------------------------------
def make_optimizers(objective: Objective, accelerator: Accelerator) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per trainable group: the objective's ``optim.<group>.optimizer`` (a Hydra
    ``_partial_`` optimizer, AdamW by default) applied to the group's parameters."""
    return {group: accelerator.prepare(objective.optim[group]["optimizer"](params))
            for group, params in objective.trainable().items()}


def optimise(objective: Objective, optimizers: dict, accelerator: Accelerator, group: str, losses,
             metrics: dict) -> bool:
    """Backward the summed loss, average gradients over processes, clip, step ``group``. A
    non-finite loss or gradient norm skips the step (parameters and optimizer state untouched);
    returns whether the step was taken."""
    params = objective.trainable()[group]
    optimizer = optimizers[group]
    optimizer.zero_grad(set_to_none=True)
    total = losses.total()
    accelerator.backward(total)
    # The objectives call the denoiser many times per step in several roles, which does not fit
    # DDP's one-forward contract, so gradients are averaged explicitly (a no-op on one process;
    # under train.fsdp=true FSDP already averaged the sharded ones)
    if accelerator.num_processes > 1:
        fsdp.average_gradients(params, accelerator)
    norm = fsdp.clip_grad_norm_(params, objective.optim[group]["grad_clip"], accelerator)
    loss, norm = float(_mean_over_processes(accelerator, total)), float(norm)
    finite = math.isfinite(loss) and math.isfinite(norm)
    if finite or accelerator.scaler is not None:  # fp16: the grad scaler itself skips inf steps
        optimizer.step()
    if finite:
        objective.after_step(group)
    optimizer.zero_grad(set_to_none=True)
    metrics[f"{group}/loss"] = loss
    metrics[f"{group}/grad_norm"] = norm
    metrics.update({k: float(_mean_over_processes(accelerator, v)) for k, v in losses.terms.items()})
    return finite


def _mean_over_processes(accelerator: Accelerator, value: torch.Tensor) -> torch.Tensor:
    """A logged loss: the mean over processes of their batch means (the global batch's mean)."""
    value = value.detach().float().reshape(())
    return accelerator.reduce(value, reduction="mean") if accelerator.num_processes > 1 else value


def train_step(run: Run, step: int, drawn: dict | None = None) -> dict:
    """One iteration: each group the objective schedules for this step gets its loss and its
    optimizer step; reward feedback joins the student's loss."""
    metrics: dict = {"step": step + 1}
    if run.accelerator.num_processes > 1:
        metrics["processes"] = run.accelerator.num_processes
    gen = step_generator(run, step)
    batch = load_batch(run, step, drawn)
    metrics["data/skipped"] = len(run.bad_items)
    taken = True
    for group in run.objective.updates(step):
        with run.accelerator.autocast():
            losses = group_loss(run.objective, group, batch, step, gen)
            if run.feedback and losses.x0 is not None:  # the student's single-step prediction
                reward = run.feedback(losses.x0, batch.prompts, gen)
                losses.terms.update({f"reward/{k}": v for k, v in reward.terms.items()})
                metrics.update({f"score/{k}": float(_mean_over_processes(run.accelerator, v.mean()))
                                for k, v in reward.scores.items()})
        taken &= optimise(run.objective, run.optimizers, run.accelerator, group, losses, metrics)
    run.nonfinite += not taken
    run.nonfinite_in_a_row = 0 if taken else run.nonfinite_in_a_row + 1
    metrics["skipped/nonfinite"] = run.nonfinite
    return metrics


def train(run: Run) -> None:
    cfg = run.cfg.train
    bar = tqdm(range(run.step, cfg.steps), initial=run.step, total=cfg.steps, desc="train",
               disable=not run.accelerator.is_main_process)
    loader = iter(step_loader(step_batches(run), run.step, cfg.steps, cfg.num_workers,
                              pin_memory=run.accelerator.device.type == "cuda"))
    for step in bar:
        t0 = time.perf_counter()
        drawn = next(loader)
        metrics = train_step(run, step, drawn)
        metrics["sec"] = round(time.perf_counter() - t0, 4)
        run.step = step + 1
        run.history.append(metrics)
        metrics.update(validate(run))  # every eval.every / samples.every steps: the probe, the samples
        if run.accelerator.is_main_process:
            run.out.append_metrics(metrics)
            if run.accelerator.trackers:
                run.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=run.step)
            first = next((k for k in metrics if k.endswith("/loss")), None)
            if first:
                bar.set_postfix({first: f"{metrics[first]:.4f}"})
        if run.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
            last = run.out.latest()
            raise TrainingStopped(f"train: {run.nonfinite_in_a_row} steps in a row (up to step {run.step}) had a "
                                  f"non-finite loss or gradient, train.max_nonfinite_steps={cfg.max_nonfinite_steps}; "
                                  f"stopped without DONE, last good checkpoint: {last or 'none'} "
                                  f"(lower objective.optim.*.lr?)")
        if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
            save_checkpoint(run)


def save_checkpoint(run: Run) -> None:
    """The main process writes the checkpoint; a sharded run first gathers it on every process."""
    states = {k: fsdp.full_optimizer_state(o) for k, o in run.optimizers.items()}
    with fsdp.gathered(run.denoiser, run.accelerator):
        if run.accelerator.is_main_process:
            run.out.save_checkpoint(run.step, run.denoiser, run.objective, states,
                                    keep=run.cfg.train.keep_checkpoints, loop_state=run.loop_state())
            plot_curves(run.history, run.out.path / "curves.png")


def run_training(cfg: DictConfig, run_dir: Path) -> Run:
    torch.manual_seed(cfg.seed)
    out = RunDir(run_dir)
    try:
        run = setup(cfg, run_dir)
        train(run)
        with fsdp.gathered(run.denoiser, run.accelerator):  # the main process finishes alone
            finish(run)
        run.accelerator.end_training()  # flushes and closes the trackers
    finally:
        out.unlock()
    return run


@hydra.main(config_path="pkg://conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run = report_errors("turbo-train", lambda: run_training(cfg, Path(HydraConfig.get().runtime.output_dir)),
                        errors=(TrainingStopped,))
    print(f"run directory: {run.out.path}")


if __name__ == "__main__":
    main()
