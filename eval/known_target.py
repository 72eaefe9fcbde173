"""A distillation experiment whose answer is known: ``python -m eval.known_target``.

The data is a low-dimensional distribution we choose, so the distance from a student's samples to
it can be computed exactly rather than judged by a learned metric. Each of 4 prompts ("mode 0" ..
"mode 3") owns a two-component Gaussian mixture in R^8 (centres +-c_k, |c_k| = 2, std 0.1): a
one-step sampler that predicts the conditional mean lands between the two modes, far from both.

1. A tiny Wan-architecture teacher (one token of 8 latent values: shape 2,1,2,2 with patch 1,2,2)
   is trained with the flow schedule's plain denoising loss (shift 3, as our Wan configs),
   10% of prompts dropped for CFG.
2. Each objective distils it into LoRA students with the project's own objective classes and the
   training loop's ``optimise`` step; CD gives one any-step student, DMD2 and W2S one student per
   step count (1, 2, 4), as their students are trained for a fixed timestep list.
3. The distance is the energy distance between 512 samples per prompt and fresh data, averaged
   over prompts; "untrained" is the same sampler with the LoRA at zero (the teacher itself).

Guidance is off throughout (CD: w = 0; DMD2 / W2S: real-score CFG 1), since the target is the
data distribution itself, which guidance would sharpen away from.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import Accelerator

from distill.objectives.base import Batch, adamw, denoising_loss, group_loss
from distill.objectives.cd import ConsistencyDistillation
from distill.objectives.dmd2 import DMD2
from distill.objectives.w2s import W2S
from distill.train import make_optimizers, optimise
from turbo.denoiser import Denoiser
from turbo.models import tiny_text_encoder, tiny_wan
from turbo.schedule import FlowSchedule

SHAPE = (2, 1, 2, 2)  # C,F,H,W: 8 numbers, one Wan token
PROMPTS = [f"mode {k}" for k in range(4)]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


@dataclass
class Settings:
    seed: int = 0
    teacher_steps: int = 800
    student_steps: int = 400
    lr: float = 1e-4
    batch: int = 128
    eval_samples: int = 512
    step_counts: tuple[int, ...] = (1, 2, 4)
    objectives: tuple[str, ...] = ("cd", "dmd2", "w2s")


@dataclass
class Result:
    objective: str
    steps: int
    untrained: float
    trained: float
    sec_per_step: float


@dataclass
class Report:
    settings: Settings
    teacher_50_step: float
    data_floor: float
    results: list[Result] = field(default_factory=list)


class World:
    """The known distribution. ``sample(k, n)``: n points of prompt k, shape n,2,1,2,2."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        c = torch.randn(len(PROMPTS), 8, generator=g)
        self.centres = 2.0 * c / c.norm(dim=1, keepdim=True)

    def sample(self, k: int, n: int, g: torch.Generator) -> torch.Tensor:
        sign = torch.randint(0, 2, (n, 1), generator=g) * 2 - 1
        x = sign * self.centres[k] + 0.1 * torch.randn(n, 8, generator=g)
        return x.view(n, *SHAPE)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten(1).double(), y.flatten(1).double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def _batch(world: World, text, n: int, g: torch.Generator, drop: float = 0.0) -> Batch:
    ks = torch.randint(0, len(PROMPTS), (n,), generator=g).tolist()
    prompts = [PROMPTS[k] for k in ks]
    latents = torch.cat([world.sample(k, 1, g) for k in ks])
    cond_prompts = [p if torch.rand(1, generator=g).item() >= drop else "" for p in prompts]
    return Batch(prompts, text(cond_prompts), text([""] * n), SHAPE, latents)


def train_teacher(s: Settings, world: World, text) -> Denoiser:
    torch.manual_seed(s.seed)
    d = Denoiser(tiny_wan(seed=s.seed, in_channels=2, num_layers=2, head_dim=16, ffn_dim=128),
                 FlowSchedule(shift=3.0), "wan")
    d.backbone.requires_grad_(True)
    opt = torch.optim.AdamW(d.backbone.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(s.seed + 1)
    for _ in range(s.teacher_steps):
        b = _batch(world, text, s.batch, g, drop=0.1)
        loss = denoising_loss(d, b.latents, b.cond, "teacher", g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d.backbone.requires_grad_(False)
    return d


def build_objective(name: str, teacher: Denoiser, steps: int, lr: float = 1e-4):
    d = copy.deepcopy(teacher)
    adapter = {"rank": 8, "alpha": 8, "target_modules": TARGETS}
    adam = adamw(lr=lr)
    if name == "cd":
        return ConsistencyDistillation(d, num_ddim_timesteps=50, w_min=0.0, w_max=0.0, optim={"student": adam},
                                       adapter=adapter)
    ts = [999, 749, 499, 249] if steps == 4 else [999, 499] if steps == 2 else [999]
    kw = dict(guidance_scale=1.0, denoising_timesteps=ts, dfake_gen_update_ratio=2,
              optim={"student": adam, "critic": adam}, adapter=adapter)
    return DMD2(d, **kw) if name == "dmd2" else W2S(d, weak_weight=0.25, **kw)


def distance(world: World, text, objective, steps: int, n: int, seed: int) -> float:
    dists = []
    for k, prompt in enumerate(PROMPTS):
        g = torch.Generator().manual_seed(seed + k)
        x = objective.sampler(steps)(objective.denoiser, text([prompt] * n), None, SHAPE, g, objective.student)
        dists.append(energy_distance(x, world.sample(k, n, g)))
    return sum(dists) / len(dists)


def distil(objective, world: World, text, s: Settings) -> float:
    accelerator = Accelerator(cpu=True)
    optimizers = make_optimizers(objective, accelerator)
    g = torch.Generator().manual_seed(s.seed + 2)
    t0 = time.perf_counter()
    for step in range(s.student_steps):
        batch = _batch(world, text, s.batch, g)
        for group in objective.updates(step):
            optimise(objective, optimizers, accelerator, group, group_loss(objective, group, batch, step, g), {})
    return (time.perf_counter() - t0) / s.student_steps


def run(s: Settings) -> Report:
    world, text = World(s.seed), tiny_text_encoder(seed=s.seed)
    teacher = train_teacher(s, world, text)
    from turbo.sampling import sample_teacher

    floor = sum(energy_distance(world.sample(k, s.eval_samples, torch.Generator().manual_seed(k)),
                                world.sample(k, s.eval_samples, torch.Generator().manual_seed(100 + k)))
                for k in range(len(PROMPTS))) / len(PROMPTS)
    t50 = []
    for k, p in enumerate(PROMPTS):
        g = torch.Generator().manual_seed(200 + k)
        x = sample_teacher(teacher, text([p] * s.eval_samples), None, SHAPE, 50, 1.0, g)
        t50.append(energy_distance(x, world.sample(k, s.eval_samples, g)))
    report = Report(s, sum(t50) / len(t50), floor)
    for name in s.objectives:
        trainings = [None] if name == "cd" else list(s.step_counts)
        for steps in trainings:
            obj = build_objective(name, teacher, steps or 4, s.lr)
            counts = s.step_counts if steps is None else [steps]  # CD: one any-step student
            before = {n: distance(world, text, obj, n, s.eval_samples, 300) for n in counts}
            sec = distil(obj, world, text, s)
            for n, b in before.items():
                report.results.append(Result(name, n, b, distance(world, text, obj, n, s.eval_samples, 300), sec))
    return report


def to_markdown(r: Report) -> str:
    s = r.settings
    lines = [f"Teacher {s.teacher_steps} steps; students {s.student_steps} steps at lr {s.lr:g}, batch {s.batch}, seed {s.seed}.",
             f"Data-vs-data floor: {r.data_floor:.4f}; 50-step teacher (Euler, no CFG): {r.teacher_50_step:.4f}", "",
             "| objective | sampling steps | untrained student | trained student | ratio | sec / training step |",
             "|---|---|---|---|---|---|"]
    for x in r.results:
        lines.append(f"| {x.objective} | {x.steps} | {x.untrained:.4f} | {x.trained:.4f} | "
                     f"{x.trained / x.untrained:.2f} | {x.sec_per_step:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-steps", type=int, default=Settings.teacher_steps)
    p.add_argument("--student-steps", type=int, default=Settings.student_steps)
    p.add_argument("--lr", type=float, default=Settings.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the numbers to this file")
    a = p.parse_args()
    report = run(Settings(seed=a.seed, teacher_steps=a.teacher_steps, student_steps=a.student_steps, lr=a.lr))
    print(to_markdown(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(asdict(report), f, indent=2)


if __name__ == "__main__":
    main()
