"""Making a denoiser fast at inference: LoRA merged or kept, int8 weights, attention backend, compile.

- ``merge_lora``: folds an adapter into the base weights and removes every peft wrapper, so the
  network runs at the base model's cost; the merged adapter's name (e.g. "student") is then the
  denoiser's only role, with its guidance embedding if it has one.
- ``quantize="int8"``: optimum-quanto weight-only int8 (``quantize`` + ``freeze``, as Magic 1-For-1
  ships its int8 model); the ``quant`` extra.
- ``attention_backend``: diffusers' attention dispatcher (``native``, ``flash``, ``sage``, ...).
- ``compile``: ``torch.compile`` of the backbone's forward.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from turbo.denoiser import Denoiser


def merge_lora(denoiser: Denoiser, adapter: str) -> None:
    """Fold ``adapter`` into the base weights and drop all adapters (a guidance embedding stays)."""
    if adapter not in denoiser.adapters:
        raise KeyError(f"no adapter named {adapter!r} to merge; adapters: {denoiser.adapters}")
    layers = [(name, m) for name, m in denoiser.backbone.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer._disable_adapters = False
        layer.merge(adapter_names=[adapter])
        parent_name, _, child = name.rpartition(".")
        parent = denoiser.backbone.get_submodule(parent_name) if parent_name else denoiser.backbone
        setattr(parent, child, layer.get_base_layer())
    for name in list(denoiser.guidance_embeddings):  # the merged role keeps its w input
        if name != adapter:
            del denoiser.guidance_embeddings[name]
    denoiser.backbone.peft_config = {}
    denoiser._layers_cache = None
    denoiser.merged = adapter


def quantize_int8(module: nn.Module) -> nn.Module:
    """Weight-only int8 through optimum-quanto (pip install 'turbo[quant]')."""
    try:
        from optimum.quanto import freeze, qint8, quantize
    except ImportError as e:
        raise ImportError("quantize=int8 needs optimum-quanto: pip install 'turbo[quant]'") from e
    quantize(module, weights=qint8)
    freeze(module)
    return module


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by a module's weights and buffers, counting quantized tensors by their parts."""
    def nbytes(t) -> int:
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, nn.Parameter):
            return sum(nbytes(getattr(t, a)) for a in t.__tensor_flatten__()[0])
        return t.numel() * t.element_size()

    return sum(nbytes(v) for v in module.state_dict().values())


def prepare_for_inference(denoiser: Denoiser, *, merge: str | None = None, quantize: str | None = None,
                          attention_backend: str | None = None, compile: bool = False) -> Denoiser:
    """Apply the inference options in a safe order: merge, then quantize, then backend, then compile."""
    if merge is not None:
        merge_lora(denoiser, merge)
    if quantize not in (None, "int8"):
        raise ValueError(f"inference.quantize must be null or 'int8', found {quantize!r}")
    if quantize == "int8":
        quantize_int8(denoiser.backbone)
    if attention_backend is not None:
        try:
            denoiser.backbone.set_attention_backend(attention_backend)
        except (ValueError, KeyError) as e:
            raise ValueError(f"inference.attention_backend={attention_backend!r} is not available here: {e}") from e
    if compile:
        denoiser.backbone.forward = torch.compile(denoiser.backbone.forward)
    return denoiser
