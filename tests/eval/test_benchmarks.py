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


def test_the_cache_benchmark_counts_the_real_text_encoder_it_leaves_out():
    from eval.cache_bench import real_size_table

    table = real_size_table()  # the meta device: no memory
    # UMT5-XXL is 5.68 B parameters (11.4 GB in bf16) beside the 14.29 B transformer
    assert "| UMT5-XXL text encoder (not loaded with data=cached) | 5.68 B | 11.4 |" in table
    assert "| transformer | 14.29 B | 28.6 |" in table and "(0.72x)" in table


def test_the_gpu_benchmark_runs_its_code_on_a_cpu_and_appends_its_rows(tmp_path):
    from eval.gpu_bench import main

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n")
    text = main(["--size", "tiny", "--device", "cpu", "--repeats", "1", "--out", str(out)])
    assert out.read_text() == "# Benchmarks\n\n" + text + "\n"
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    ratio, bound = rows["teacher / student"].split("x (NFE bound ")
    assert 1 < float(ratio) <= float(bound.split("x")[0]) * 1.1  # what the network evaluations allow
    assert {"training step, cd (LoRA rank 64)", "training step, dmd2, three copies (LoRA rank 64)",
            "training step, cd + reward feedback (HPSv2, 5 frames) (LoRA rank 64)"} <= set(rows)
    assert rows["reward feedback's cost"].endswith("% step time over CD")
    video = next(v for k, v in rows.items() if k.startswith("sliding-window video"))
    assert float(video.split(" s of video")[0]) > 0
    assert "% MFU of 989" in rows["transformer forward + backward (full backward)"]
