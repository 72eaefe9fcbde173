"""python -m eval.memory_plan: per-GPU memory of a LoRA distillation run, from the meta device."""

import pytest
import torch

from eval.memory_plan import lora_params, main, parse, saved_bytes


def test_lora_parameters_are_rank_times_fan_in_plus_fan_out_of_each_target():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    assert lora_params(model, ["0"], 2) == 2 * (4 + 6)
    assert lora_params(model, ["0", "2"], 2) == 2 * (4 + 6) + 2 * (6 + 3)


def test_saved_activations_grow_linearly_with_tokens():
    from turbo.models import tiny_wan

    model = tiny_wan(seed=0).to(torch.bfloat16).requires_grad_(False)
    b2, b4, b8 = (saved_bytes(model, "wan", (16, f, 4, 4)) for f in (2, 4, 8))
    assert b8 - b4 == pytest.approx(2 * (b4 - b2), rel=0.05)  # a constant (text keys / values) + a slope


def test_the_plan_of_a_real_model_adds_up_and_says_whether_it_fits(capsys):
    args = ["model=wan2.1_t2v_1.3b", "objective=dmd2", "gpus=4", "frames=5", "height=64", "width=64", "rank=8"]
    text = main(args + ["gpu_memory=80"])
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| ") and "---" not in line and "per GPU" not in line}
    parts = [float(v) for k, v in rows.items() if not k.startswith(("**", "three", "shared"))]
    total = float(rows["**total**"].split("**")[1])
    assert total == pytest.approx(sum(parts), abs=0.02) and "fits in 80" in rows["**total**"]
    assert "does NOT fit in 0.5" in main(args + ["gpu_memory=0.5"])
    no_ckpt = main(args + ["gradient_checkpointing=false"])
    acts = [float(line.split("|")[2]) for t in (text, no_ckpt) for line in t.splitlines() if line.startswith("| activations")]
    assert acts[1] > acts[0]
    with pytest.raises(SystemExit, match="expected key=value with key in"):
        parse(["gpu=8"])
