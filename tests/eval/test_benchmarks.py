"""The benchmark scripts keep working (smoke runs at toy sizes; their numbers go to docs)."""

import pytest
import torch

from eval import decode_bench, objective_bench, speed


def test_speed_benchmark_counts_what_it_says():
    r = speed.run("tiny", "cpu", torch.float32, repeats=3, shape=(16, 2, 4, 4))
    assert r["teacher_s"] > 0 and r["student_s"] > 0
    # 50 CFG steps (100 evaluations) against 4: the printed ratio cannot honestly exceed 25x
    assert (r["teacher_nfe"], r["student_nfe"], r["speedup_bound"]) == (100, 4, 25.0)
    assert 0 < r["speedup"] <= 1.25 * r["speedup_bound"]
    if r["int8_mb"] is not None:  # the quant extra is installed
        assert r["int8_mb"] < 0.75 * r["bf16_mb"]


@pytest.mark.parametrize("objective", ["cd", "dmd2"])
def test_objective_bench_measures_a_step(objective):
    r = objective_bench.measure(objective, "tiny", "shared")
    assert r["step_sec"] > 0 and r["base_params_m"] > 0


def test_decode_bench_decodes_only_the_chosen_frames():
    r = decode_bench.measure("wan", "first", num_frames=5, size=16, m=1)
    assert (r["decoded"], r["of"]) == (1, 5)
