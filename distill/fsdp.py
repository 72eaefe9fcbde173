"""``train.fsdp=true``: the frozen base sharded over the processes (PyTorch's FSDP2, ``fully_shard``).

Each transformer block of the backbone (the classes its ``_no_split_modules`` names, diffusers'
own list of what must not be split) becomes one FSDP unit, and the backbone the root unit: every
process keeps 1/N of every base weight and of every LoRA adapter living in those blocks, gathers a
block's weights just before it runs and frees them after. The adapters train as before: FSDP
reduce-scatters their gradients (the mean over processes), so ``distill.train.optimise`` averages
only what FSDP does not hold (the guidance embeddings, a GAN head).

Why not DDP or accelerate's FSDP plugin: the objectives call one backbone many times per step in
several adapter roles (teacher, student, critic, EMA target), which fits neither DDP's
one-forward contract nor a wrapped ``prepare``d model; ``fully_shard`` shards the modules in place
and leaves the calls as they are.

What runs on the main process alone (checkpoints, the validation probe and samples, the end of the
run) runs inside :func:`gathered`: every process gathers the full weights once, the main process
works on plain tensors (checkpoint files are the same as an unsharded run's, so a run resumes on any
number of processes, sharded or not), then every process frees them again.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from turbo.config import ConfigError
from turbo.denoiser import Denoiser


def blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's transformer (or UNet) blocks: its modules whose class ``_no_split_modules`` names."""
    names = set(getattr(backbone, "_no_split_modules", None) or ())
    found = [m for m in backbone.modules() if type(m).__name__ in names]
    if not found:
        raise ConfigError(f"train.fsdp=true: {type(backbone).__name__} names no blocks to shard "
                          f"(_no_split_modules={sorted(names)})")
    return found


def shard(denoiser: Denoiser, cfg, objective: str, processes: int) -> None:
    """``train.fsdp=true``: shard ``denoiser.backbone`` in place (after the objective added its
    adapters, before the optimizers are made: FSDP replaces the parameters by sharded ones)."""
    if objective == "diffusion" or cfg.precision == "fp16":
        raise ConfigError(f"train.fsdp=true shards a frozen base under LoRA training with precision=no|bf16; "
                          f"found objective={objective}, precision={cfg.precision}")
    if processes == 1:
        print("train.fsdp=true on one process: nothing to shard over, the base stays whole", flush=True)
        return
    base_dtype = cfg.base_dtype
    if base_dtype == "float8":
        raise ConfigError("train.fsdp=true with base_dtype=float8: diffusers' layerwise casting and FSDP's "
                          "all-gather do not compose; use base_dtype=bfloat16")
    # a bf16 base with float32 adapters: FSDP gathers one dtype per block, so both go as bf16
    # (the float32 adapters stay the optimizer's master copy, gradients are reduced in float32)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if base_dtype == "bfloat16" else MixedPrecisionPolicy())
    for block in blocks(denoiser.backbone):
        fully_shard(block, mp_policy=policy)
    fully_shard(denoiser.backbone, mp_policy=policy)
    held = sum(p.to_local().numel() for p in denoiser.backbone.parameters())
    total = sum(p.numel() for p in denoiser.backbone.parameters())
    print(f"fsdp: process {torch.distributed.get_rank()} holds {held} of the backbone's {total} "
          f"parameters ({held / total:.3f})", flush=True)


def is_sharded(denoiser: Denoiser) -> bool:
    return isinstance(denoiser.backbone, FSDPModule)


def _units(denoiser: Denoiser) -> list[FSDPModule]:
    return [m for m in denoiser.backbone.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(denoiser: Denoiser, accelerator) -> Iterator[None]:
    """Every process: gather the full weights (a collective); inside, the backbone's parameters are
    plain tensors and forwards run without collectives, so the main process may work alone; on exit
    every process waits for it, then frees the gathered weights. A no-op when nothing is sharded."""
    if not is_sharded(denoiser):
        yield
        return
    units = _units(denoiser)
    groups = [g for unit in units for g in _param_groups(unit)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    # FSDP's state_dict pre-hooks reshard the module (a local op): a state_dict() inside (a LoRA
    # saved, a merged export) would make the main process's next forward gather again, alone, and
    # hang. They are lifted while gathered, so state_dict() returns the gathered plain tensors.
    for g in groups:
        for handles in (g._module_to_pre_save_state_dict_hook_handle, g._module_to_pre_load_state_dict_hook_handle):
            for handle in handles.values():
                handle.remove()
            handles.clear()
    try:
        yield
    finally:
        accelerator.wait_for_everyone()
        for g in groups:
            g._register_state_dict_hooks()
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def _param_groups(unit: FSDPModule) -> list:
    """The FSDPParamGroups of one unit (torch's private layout, pinned in requirements/lock.txt and
    exercised by tests/distill/test_multiprocess.py)."""
    state = unit._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:
        groups = [g for g in [getattr(state, "_fsdp_param_group", None)] if g is not None]
    return list(groups)


def average_gradients(params: list[nn.Parameter], accelerator) -> None:
    """The mean over processes of the gradients FSDP does not reduce itself (plain tensors)."""
    for p in params:
        if p.grad is not None and not isinstance(p.grad, DTensor):
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float, accelerator) -> Tensor:
    """Clip a group's gradients to ``max_norm``; returns their global 2-norm. Unsharded: accelerate's
    (which unscales fp16 gradients first). Sharded: torch's fused kernels refuse a group mixing
    DTensor and plain gradients, so by hand: the global norm (a sharded gradient's norm reduced over
    its shards), then every gradient scaled by ``min(1, max_norm / norm)``."""
    if not any(isinstance(p, DTensor) for p in params):
        return accelerator.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g.float()) for g in grads]
    total = torch.stack([n.full_tensor() if isinstance(n, DTensor) else n for n in norms]).norm()
    if math.isfinite(max_norm) and max_norm > 0:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return total


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's ``state_dict`` with every sharded tensor gathered (a collective when sharded:
    call it on every process), so the file matches an unsharded run's; unsharded, its ``state_dict``."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in s.items()}
                      for i, s in state["state"].items()}
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full ``state_dict`` (from any number of processes) into an optimizer over sharded
    parameters: each full tensor is cut into this process's shard of its parameter."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if isinstance(p, DTensor):
                s = optimizer.state.get(p, {})
                for k, v in s.items():
                    if isinstance(v, Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                        s[k] = distribute_tensor(v.to(p.to_local().device), p.device_mesh, p.placements)
