"""The Denoiser: one frozen diffusers backbone, many adapter roles.

Teacher, student and critic are the SAME network: the teacher is the frozen base with every
adapter off, the student and the critic are the base plus their own peft LoRA adapter, and a
role can also be a weighted mix of adapters (W2S's real score, ``{"critic": 0.25}``). Memory is
one copy of the base weights plus the adapters, not one copy per role.

Roles are switched by setting each peft layer's active adapters and scales directly. We do not
call peft's ``set_adapter``: it also flips ``requires_grad`` on the adapters it (de)activates,
which would let a role switch inside a loss silently change what an optimizer trains.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Mapping, Union

import torch
import torch.utils.checkpoint
from diffusers.models.embeddings import get_timestep_embedding
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from turbo.families import get_family
from turbo.schedule import Schedule
from turbo.text import TextCond

Role = Union[str, Mapping[str, float]]


@dataclass
class Pred:
    """A prediction at (x_t, t): the raw network output and the x0 and eps it implies."""

    out: Tensor
    x0: Tensor
    eps: Tensor


def guidance_features(w: Tensor, dim: int = 256) -> Tensor:
    """Sinusoidal embedding of ``w * 1000`` (LCM / T2V-Turbo w-conditioning): B -> B,dim,
    [sin | cos] halves with frequencies ``10000^(-i / (dim/2 - 1))``: diffusers' timestep
    embedding with ``downscale_freq_shift=1`` (LCM's ``get_guidance_scale_embedding``)."""
    return get_timestep_embedding(w.float() * 1000.0, dim, flip_sin_to_cos=False, downscale_freq_shift=1)


class GuidanceEmbedding(nn.Module):
    """The student's guidance-scale input, placed as T2V-Turbo places it: ``Linear(256 -> d, bias=False)``
    on ``guidance_features(w)``, added to the timestep's sinusoidal features *before* the time
    embedder's MLP (``d`` is the MLP's input width). This is diffusers' own
    ``TimestepEmbedding(cond_proj_dim=256)`` (``UNet3DConditionModel(time_cond_proj_dim=256)``:
    ``sample + cond_proj(condition)`` then ``linear_1``), applied through a forward pre-hook on the
    family's time embedder so it works for any family (Wan's ``condition_embedder.time_embedder``,
    UNet3D's ``time_embedding``, SD3 / HunyuanVideo's ``time_text_embed.timestep_embedder``), and
    through the MLP its effect depends on t. Zero-initialised: attaching it leaves the student
    equal to the teacher."""

    def __init__(self, time_features_dim: int, dim: int = 256):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim, time_features_dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, w: Tensor) -> Tensor:
        return self.linear(guidance_features(w, self.dim).to(self.linear.weight.dtype))


class Denoiser(nn.Module):
    """Backbone + schedule + adapter roles. Latents are B,C,F,H,W (diffusers' video layout).

    ``family`` names the call convention (``turbo.families.FAMILIES``: "wan" for
    ``WanTransformer3DModel``, "unet3d" for ``UNet3DConditionModel``, ...).
    """

    def __init__(self, backbone: nn.Module, schedule: Schedule, family: str,
                 time_embedding_module: str | None = None):
        super().__init__()
        self.spec = get_family(family)
        self.backbone = backbone.requires_grad_(False)
        self.schedule = schedule
        self.family = family
        self.time_embedding_module = time_embedding_module
        self.guidance_embeddings = nn.ModuleDict()  # role name -> GuidanceEmbedding
        self._layers_cache: list[BaseTunerLayer] | None = None
        self._active: dict[str, float] | None = None  # the adapters (and scales) the backbone runs with now
        self.merged: str | None = None  # set by turbo.inference.merge_lora

    # --- adapters ------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(getattr(self.backbone, "peft_config", {}) or {})

    def add_adapter(self, name: str, rank: int, alpha: float, target_modules: list[str],
                    dropout: float = 0.0, guidance_embedding: bool = False) -> list[nn.Parameter]:
        """Attach a zero-initialised LoRA adapter (peft's default: B = 0, so the role starts equal
        to the teacher) and, optionally, a guidance-scale embedding; return its parameters."""
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists")
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                            lora_dropout=dropout, init_lora_weights=True)
        # peft freezes every other adapter when it injects a new one; restore what the caller set
        before = {p: p.requires_grad for n, p in self.backbone.named_parameters() if "lora_" in n}
        try:
            with warnings.catch_warnings():  # "multiple adapters" is exactly what we want
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                inject_adapter_in_model(config, self.backbone, adapter_name=name)
        except ValueError as e:
            raise ValueError(f"model.lora.target_modules={list(target_modules)} does not fit this "
                             f"backbone ({type(self.backbone).__name__}): {e}") from e
        for p in self.adapter_parameters(name):  # float32 adapters on a bf16 / fp8 base (peft makes them its dtype)
            p.data = p.data.float()
        # diffusers keeps adapter configs in ``peft_config`` (not every backbone class has its
        # PeftAdapterMixin, e.g. UNet3DConditionModel, so we keep it the same way ourselves)
        self.backbone.peft_config = {**(getattr(self.backbone, "peft_config", None) or {}), name: config}
        if guidance_embedding:
            self.guidance_embeddings[name] = GuidanceEmbedding(self._time_features_dim())
        self._layers_cache = None  # new LoRA layers may have been injected
        self._set_active(None)  # adding an adapter activates it in peft; the default role is the teacher
        for p, flag in before.items():
            p.requires_grad_(flag)
        params = self.adapter_parameters(name)
        for p in params:
            p.requires_grad_(True)
        return params

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """The LoRA (and guidance-embedding) parameters of one adapter, in a stable order."""
        params = [p for n, p in self.backbone.named_parameters() if f".{name}." in n and "lora_" in n]
        if name in self.guidance_embeddings:
            params += list(self.guidance_embeddings[name].parameters())
        if not params:
            raise KeyError(f"no adapter named {name!r}; adapters: {self.adapters}")
        return params

    def _set_active(self, weights: Mapping[str, float] | None) -> None:
        """Activate adapters with scales (None or {} = adapters off = teacher)."""
        self._active = dict(weights) if weights else None
        for module in self._tuner_layers:
            module._disable_adapters = not weights
            if weights:
                module._active_adapter = list(weights)
                for name, w in weights.items():
                    module.set_scale(name, w)

    @contextmanager
    def _activated(self, weights: Mapping[str, float] | None) -> Iterator[None]:
        before = self._active
        self._set_active(weights)
        try:
            yield
        finally:
            self._set_active(before)

    def role(self, role: Role) -> AbstractContextManager[None]:
        """Run the backbone as ``role``: "teacher", an adapter name, or {adapter: weight, ...}."""
        return self._activated(self._role_weights(role))

    def store_base(self, dtype: str) -> None:
        """The frozen base's storage: "float32" (as built); "bfloat16" keeps the modules diffusers
        marks ``_keep_in_fp32_modules`` (norms, time embedder, RoPE) in float32; "float8" stores e4m3
        and computes in bfloat16, layer by layer (diffusers' ``enable_layerwise_casting``; the
        modules it skips compute in bfloat16). Call it before adding adapters: they stay float32."""
        if dtype not in ("float32", "bfloat16", "float8"):
            raise ValueError(f"base dtype must be float32, bfloat16 or float8, found {dtype!r}")
        if dtype == "float32":
            return
        keep = getattr(self.backbone, "_keep_in_fp32_modules", None) or []
        for name, module in self.backbone.named_modules():
            if not any(k in name.split(".") for k in keep):
                for p in module.parameters(recurse=False):
                    p.data = p.data.to(torch.bfloat16)
        if dtype == "float8":
            self.backbone.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block of the backbone in backward instead of keeping its activations
        (diffusers' own switch), with the adapters that were active in the block's forward: the
        recompute runs after this call's ``role`` has been switched back, so the checkpoint restores
        it (torch.utils.checkpoint's ``context_fn``; hand-written because diffusers' default
        checkpoint function knows nothing of adapter roles)."""
        if not getattr(self.backbone, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.backbone).__name__} does not support gradient checkpointing")

        def checkpointed(module: nn.Module, *args):
            active = self._active
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                                     context_fn=lambda: (nullcontext(), self._activated(active)))

        self.backbone.enable_gradient_checkpointing(checkpointed)

    def _guidance_embedding(self, role: Role) -> GuidanceEmbedding | None:
        """The guidance embedding of ``role`` (its first adapter that has one), or None."""
        names = [role] if isinstance(role, str) else list(role)
        guided = [n for n in names if n in self.guidance_embeddings]
        return self.guidance_embeddings[guided[0]] if guided else None

    def _role_weights(self, role: Role) -> dict[str, float]:
        if self.merged is not None:  # turbo.inference.merge_lora folded this role into the base
            if role != self.merged:
                raise KeyError(f"adapter {self.merged!r} was merged into the base weights: it is the only role left, "
                               f"found role {role!r}")
            return {}
        if role == "teacher":
            return {}
        weights = {role: 1.0} if isinstance(role, str) else dict(role)
        unknown = [n for n in weights if n not in self.adapters]
        if unknown:
            raise KeyError(f"role {role!r} names unknown adapters {unknown}; adapters: {self.adapters}")
        return weights

    @property
    def _tuner_layers(self) -> list[BaseTunerLayer]:
        # cached: a role switch happens several times per step and big backbones have ~10^4 modules
        if self._layers_cache is None:
            self._layers_cache = [m for m in self.backbone.modules() if isinstance(m, BaseTunerLayer)]
        return self._layers_cache

    # --- guidance embedding hook ------------------------------------------------------------
    def _time_embed_module(self) -> nn.Module:
        if not self.time_embedding_module:
            raise ValueError("model.time_embedding_module must name the backbone's time-embedding "
                             "module to attach a guidance embedding")
        try:
            return self.backbone.get_submodule(self.time_embedding_module)
        except AttributeError as e:
            raise ValueError(f"model.time_embedding_module={self.time_embedding_module!r} is not a "
                             f"module of {type(self.backbone).__name__}") from e

    def _time_features_dim(self) -> int:
        """The width of the sinusoidal timestep features the time embedder's MLP reads."""
        return self.time_features_linear().in_features

    def time_features_linear(self) -> nn.Linear:
        """The time embedder's first Linear: the layer the guidance embedding's output enters."""
        module = self._time_embed_module()
        first = getattr(module, "linear_1", None)  # diffusers' TimestepEmbedding
        if not isinstance(first, nn.Linear):
            first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise ValueError(f"model.time_embedding_module={self.time_embedding_module!r} has no Linear layer "
                             f"to read the guidance embedding")
        return first

    @contextmanager
    def _guidance_input(self, embedding: GuidanceEmbedding | None, w: Tensor | None) -> Iterator[None]:
        """For one call: add ``embedding(w)`` to the time embedder's input features (before its MLP).
        None of diffusers' video transformers takes such an input (only the UNets' ``timestep_cond``
        does), so a forward pre-hook bound to this call's ``w`` is registered and removed around it;
        the Denoiser holds no per-call state."""
        if embedding is None or w is None:
            yield
            return

        def add(module: nn.Module, args: tuple, kwargs: dict):
            sample = args[0] if args else kwargs["sample"]
            rows = w if sample.shape[0] == w.shape[0] else w.repeat_interleave(sample.shape[0] // w.shape[0])
            sample = sample + embedding(rows.to(sample.device)).to(sample.dtype)  # image families: B*F rows
            return ((sample, *args[1:]), kwargs) if args else (args, {**kwargs, "sample": sample})

        handle = self._time_embed_module().register_forward_pre_hook(add, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    # --- forward -----------------------------------------------------------------------------
    def raw(self, x_t: Tensor, t: Tensor, cond: TextCond, schedule: Schedule | None = None) -> Tensor:
        """The backbone's raw output in the active role (``t``: indices of ``schedule``, default ours)."""
        tm = (schedule or self.schedule).model_timestep(t).to(x_t.device)
        # a bf16 (or fp16) base gets its inputs in its dtype and gives its output back in the
        # caller's, so the schedule's conversions stay in float32 (as diffusers' pipelines do)
        dtype = self.backbone.dtype
        if x_t.dtype == dtype:
            return self.spec.call(self.backbone, x_t, tm, cond)
        return self.spec.call(self.backbone, x_t.to(dtype), tm, cond.to(x_t.device, dtype)).to(x_t.dtype)

    def forward(self, x_t: Tensor, t: Tensor | int, cond: TextCond, *, role: Role = "teacher",
                guidance: Tensor | None = None, schedule: Schedule | None = None) -> Pred:
        """Predict at (x_t, t). ``guidance``: B guidance scales fed to the role's guidance
        embedding (ignored by roles without one). ``schedule``: the one ``t`` indexes (a sampling
        plan's ``GridSchedule``); default the denoiser's own."""
        schedule = schedule or self.schedule
        t = _batch_t(t, x_t)
        with self.role(role), self._guidance_input(self._guidance_embedding(role), guidance):
            out = self.raw(x_t, t, cond, schedule)
        x0, eps = schedule.to_x0_eps(out, x_t, t)
        return Pred(out, x0, eps)

    def cfg(self, x_t: Tensor, t: Tensor | int, cond: TextCond, uncond: TextCond, scale: Tensor | float,
            *, role: Role = "teacher", guidance: Tensor | None = None, schedule: Schedule | None = None) -> Pred:
        """Classifier-free guidance, Imagen form ``u + scale * (c - u)`` on the raw output (hence on
        x0 and eps, which are linear in it). LCM's ``x0_c + w (x0_c - x0_u)`` is ``scale = 1 + w``.
        Conditional and unconditional halves run as one batch."""
        if isinstance(scale, (int, float)) and scale == 1.0:  # no guidance: skip the unconditional half
            return self(x_t, t, cond, role=role, guidance=guidance, schedule=schedule)
        schedule = schedule or self.schedule
        t = _batch_t(t, x_t)
        both = self(torch.cat([x_t, x_t]), torch.cat([t, t]), TextCond.cat([uncond, cond]), role=role,
                    guidance=None if guidance is None else torch.cat([guidance, guidance]), schedule=schedule)
        u, c = both.out.chunk(2)
        scale = torch.as_tensor(scale, dtype=x_t.dtype, device=x_t.device)
        scale = scale.reshape(-1, *([1] * (x_t.ndim - 1))) if scale.ndim else scale
        out = u + scale * (c - u)
        x0, eps = schedule.to_x0_eps(out, x_t, t)
        return Pred(out, x0, eps)


def _batch_t(t: Tensor | int, x: Tensor) -> Tensor:
    if isinstance(t, int) or (isinstance(t, Tensor) and t.ndim == 0):
        return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"timesteps must have one entry per sample: found {t.shape[0]} for batch {x.shape[0]}")
    return t.long()
