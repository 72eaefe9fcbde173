"""python -m eval.toy_teachers: the shipped toy teachers (and, given, students) on ToyBench."""

import pytest
from hydra import compose, initialize_config_module

from distill.train import run_training
from eval.toy_teachers import main


def test_the_table_scores_a_trained_i2v_student_factored_and_from_the_true_first_frame(tmp_path):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", "model=toy_i2v", "data=toy", "reward=none",
                                          "video.num_frames=9", "video.height=32", "video.width=32",
                                          "train.steps=1", "train.batch_size=1"])
    run_training(cfg, tmp_path / "run")
    text = main(["--prompts", "1", "--steps", "2", "--t2i", "toy_t2i", "--i2v", "toy_i2v",
                 "--i2v-student", str(tmp_path / "run" / "student"),
                 "--out", str(tmp_path / "t.md")])
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["t2v (2 steps, CFG 3.0)", "t2i -> i2v (2 + 2 steps)", "real first frame -> i2v (2 steps)",
                        "t2i (2 steps) -> i2v student (2 NFE)", "real first frame -> i2v student (2 NFE)",
                        "t2i, one frame (2 steps)"]
    assert (tmp_path / "t.md").read_text().strip() == text.strip()
    # the student of toy_i2v given as a student of another I2V teacher: refused, the row would lie
    with pytest.raises(ValueError, match=r"--i2v-student=.*student: this student was trained on the model named "
                                         r"'toy_i2v' .* but model=toy_i2v_w128 is 'toy_i2v_w128'"):
        main(["--prompts", "1", "--steps", "1", "--i2v-student", str(tmp_path / "run" / "student")])


def test_by_default_the_width_128_teachers_are_named_in_the_rows_with_their_evaluations():
    text = main(["--prompts", "1", "--steps", "1"])  # the defaults: the width-128 T2I and I2V teachers
    cells = [line.split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [c[1].strip() for c in cells[1:]] == ["t2v (1 steps, CFG 3.0)", "t2i_w128_15k -> i2v_w128 (1 + 1 steps)",
                                                 "real first frame -> i2v_w128 (1 steps)", "t2i_w128_15k, one frame (1 steps)"]
    # NFE / video, the last column: CFG counts 2 per step; the factored row adds both stages
    assert [c[-2].strip() for c in cells[1:]] == ["2", "4", "2", "2"]


def test_the_t2i_guidance_and_the_seed_reach_the_rows():
    base = main(["--prompts", "2", "--steps", "2"])
    other = main(["--prompts", "2", "--steps", "2", "--t2i-guidance", "6", "--seed", "1"])
    names = [line.split("|")[1].strip() for line in other.splitlines() if line.startswith("| ") and "---" not in line]
    assert names[2] == "t2i_w128_15k (CFG 6.0) -> i2v_w128 (2 + 2 steps)" and names[4] == "t2i_w128_15k (CFG 6.0), one frame (2 steps)"
    scores = lambda text: [line.split("|")[2:-3] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]  # noqa: E731
    assert scores(base)[0] != scores(other)[0]  # the t2v row, which the T2I's CFG does not touch: the seed
