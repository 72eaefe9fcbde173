"""Locked loss values of three seeded steps of each distillation objective on the tiny default
(experiment=smoke: the tiny Wan, toy videos, no reward). A change to an objective's maths, its
random draws or the loop's order moves these numbers; a deliberate change re-locks them (run this
file's ARMS through distill.train.run_training and paste the metrics). Recorded with the pinned
versions of requirements/lock.txt on CPU in float32."""

import json

import pytest
from hydra import compose, initialize_config_module

from distill.train import run_training

ARMS = {
    "cd": ["objective=cd"],
    "dmd2_gan": ["objective=dmd2", "objective.gan.enabled=true", "objective.dfake_gen_update_ratio=1"],
    "w2s": ["objective=w2s", "objective.gt_weight=0.5", "objective.dfake_gen_update_ratio=1"],
}
LOCKED = {
    "cd": {"cd": [0.0600272, 0.048207, 0.0518886]},
    "dmd2_gan": {"dm": [0.0059286, 0.0082161, 0.0091155], "gan/generator": [0.0022514, 0.0023591, 0.0022812],
                 "critic/denoise": [2.3838274, 2.5939419, 2.394418], "gan/critic": [0.0138824, 0.0141533, 0.0135243]},
    "w2s": {"dm": [0.0059286, 0.008217, 0.0091182], "critic/denoise": [2.3422079, 2.743952, 2.3409812],
            "critic/gt": [0.7216883, 0.7401196, 0.7385296]},
}


@pytest.mark.parametrize("arm", list(ARMS))
def test_three_seeded_steps_give_the_locked_losses(tmp_path, arm):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", "train.steps=3", "reward=none", *ARMS[arm]])
    run_training(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key, want in LOCKED[arm].items():
        assert [r[key] for r in rows] == pytest.approx(want, rel=2e-4, abs=1e-6), key
