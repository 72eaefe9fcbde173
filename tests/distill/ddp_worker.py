"""Run by tests/distill/test_multiprocess.py under torch.distributed.run (2 CPU processes, gloo):
one CD step's student gradients from turbo-train's explicit all-reduce (distill.train.optimise)
and from DDP wrapping the same loss, written to <out>/rank<r>.pt."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.nn.parallel import DistributedDataParallel

from distill.objectives.base import Batch, adamw, group_loss
from distill.objectives.cd import ConsistencyDistillation
from distill.train import optimise
from turbo.denoiser import Denoiser
from turbo.models import tiny_text_encoder, tiny_wan
from turbo.sampling import Rows
from turbo.schedule import FlowSchedule


def setup(acc: Accelerator):
    torch.manual_seed(0)  # peft draws the LoRA A matrices from the global generator
    d = Denoiser(tiny_wan(seed=0), FlowSchedule(shift=3.0), "wan", "condition_embedder.time_embedder")
    objective = ConsistencyDistillation(d, optim={"student": adamw(lr=0.0)}, adapter={"rank": 4, "alpha": 4,
                                        "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]})
    with torch.no_grad():  # a non-zero student, so that gradients reach every LoRA matrix
        for p in objective.trainable()["student"]:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    prompts = ["a red circle", "a blue square"]
    text = tiny_text_encoder(seed=0)
    rows = Rows(acc.process_index, acc.num_processes, 2)
    mine = prompts[acc.process_index::acc.num_processes]
    latents = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))[acc.process_index::acc.num_processes]
    batch = Batch(mine, text(mine), text([""] * len(mine)), (16, 3, 4, 4), latents, rows=rows)
    return objective, batch


class Loss(torch.nn.Module):
    def __init__(self, objective, batch):
        super().__init__()
        self.objective, self.batch = objective, batch
        self.params = torch.nn.ParameterList(objective.trainable()["student"])

    def forward(self):
        return group_loss(self.objective, "student", self.batch, 0, torch.Generator().manual_seed(7)).total()


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)
    objective, batch = setup(acc)
    opts = {"student": acc.prepare(objective.optim["student"]["optimizer"](objective.trainable()["student"]))}
    grads = {}

    def keep(group):  # read the gradients optimise() made before it zeroes them
        grads["ours"] = [p.grad.clone() for p in objective.trainable()["student"]]
    objective.after_step = keep
    objective.optim["student"]["grad_clip"] = 1e9
    optimise(objective, opts, acc, "student", group_loss(objective, "student", batch, 0,
                                                         torch.Generator().manual_seed(7)), {})
    objective2, batch2 = setup(acc)
    ddp = DistributedDataParallel(Loss(objective2, batch2), find_unused_parameters=True)
    ddp().backward()
    grads["ddp"] = [p.grad.clone() for p in objective2.trainable()["student"]]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(grads, out / f"rank{acc.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
