"""Inference options: merged LoRA, int8 weights, attention backend."""

import pytest
import torch

from turbo.denoiser import Denoiser
from turbo.inference import merge_lora, prepare_for_inference, weight_bytes
from turbo.models import tiny_text_encoder, tiny_wan
from turbo.schedule import FlowSchedule

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def _student(guidance=True):
    torch.manual_seed(0)
    d = Denoiser(tiny_wan(seed=0, num_layers=2, num_heads=2, head_dim=16, ffn_dim=128), FlowSchedule(), "wan",
                 "condition_embedder.time_embedder")
    d.add_adapter("student", 4, 4, TARGETS, guidance_embedding=guidance)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in d.adapter_parameters("student"):
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    return d, x, torch.tensor([999, 500]), tiny_text_encoder(seed=0)(["a red circle", "a blue square"])


def test_merged_lora_gives_the_students_output_without_adapters():
    d, x, t, cond = _student()
    w = torch.tensor([5.0, 9.0])
    before = d(x, t, cond, role="student", guidance=w).out
    merge_lora(d, "student")
    assert not any("lora_" in n for n, _ in d.backbone.named_parameters())
    torch.testing.assert_close(d(x, t, cond, role="student", guidance=w).out, before, rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match="merged"):
        d(x, t, cond, role="teacher")


def test_int8_weights_are_small_and_close():
    pytest.importorskip("optimum.quanto")
    d, x, t, cond = _student(guidance=False)
    merge_lora(d, "student")
    ref = d(x, t, cond, role="student").out
    fp32 = weight_bytes(d.backbone)
    bf16 = weight_bytes(d.backbone.to(torch.bfloat16))
    d.backbone.to(torch.float32)
    prepare_for_inference(d, quantize="int8")
    out = d(x, t, cond, role="student").out
    assert ((out - ref).norm() / ref.norm()).item() < 0.02  # measured 0.4% on a similar tiny Wan
    assert weight_bytes(d.backbone) < 0.75 * bf16 < 0.4 * fp32


def test_attention_backend_is_set_through_diffusers_and_bad_names_fail():
    d, x, t, cond = _student()
    ref = d(x, t, cond, role="student").out
    prepare_for_inference(d, attention_backend="native")
    torch.testing.assert_close(d(x, t, cond, role="student").out, ref)
    with pytest.raises(ValueError, match="inference.attention_backend"):
        prepare_for_inference(d, attention_backend="no_such_backend")
    with pytest.raises(ValueError, match="inference.quantize"):
        prepare_for_inference(d, quantize="int4")
