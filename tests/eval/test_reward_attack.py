"""eval.reward_attack: the reward-only attack raises the mixture's score, and is judged by ToyBench."""

import pytest
import torch

from eval.reward_attack import attack, measure, mixture_score, table
from eval.toybench import ToyBench
from rewards.mixture import MixedReward, RewardTerm
from rewards.toy import load_toy_reward
from turbo.toy.world import BACKGROUND


@pytest.fixture(scope="module")
def mixture():
    return MixedReward([RewardTerm("toy_image", load_toy_reward("image"), 1.0, 3),
                        RewardTerm("toy_video", load_toy_reward("video"), 2.0, 9)])


def test_the_attack_climbs_the_reward_from_a_blank_video(mixture):
    prompts = ["a red circle moving left", "a blue square moving up"]
    video = attack(mixture, prompts, 9, 32, 32, steps=60, lr=0.01)
    blank = torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1).expand_as(video).contiguous()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before, after = mixture_score(mixture, blank, prompts, gen())[0], mixture_score(mixture, video, prompts, gen())[0]
    assert (after > before + 0.5).all() and video.min() >= 0 and video.max() <= 1


def test_measure_reports_success_only_when_the_reward_is_fooled(mixture):
    bench = ToyBench(num_prompts=2, num_frames=9, reference_per_prompt=2)
    results = measure(mixture, bench, steps=30, real_per_caption=4)
    for r in results:
        assert r.success == (r.attacked >= r.real_median and r.toybench_semantic < 50)
        assert r.attacked > r.blank
    text = table(results, 30, 0.01)
    assert "hacked (reached it while ToyBench Semantic < 50)" in text and text.count("\n| a ") == 2


def test_ranking_reports_each_term_on_real_and_on_given_videos(mixture):
    from eval.reward_attack import ranking

    bench = ToyBench(num_prompts=2, num_frames=9)
    real = {p: torch.stack(v) for p, v in bench.real_videos(videos_per_prompt=2, seed=5).items()}
    text = ranking(mixture, real)
    rows = [line for line in text.splitlines() if line.startswith("| toy_")]
    assert len(rows) == 4 and "| toy_video | teacher samples |" in text
    video_on_given = [float(x) for x in rows[3].split("|")[3:6]]
    assert video_on_given[0] == 1.0  # real clips passed as "teacher samples": colour ranks perfectly


def test_teacher_samples_come_from_the_factored_teachers_or_a_t2v_model():
    from eval.reward_attack import teacher_samples

    bench = ToyBench(num_prompts=2, num_frames=9)
    factored = teacher_samples(bench, steps=2, seeds=2)  # default: t2i_w128_15k -> i2v_w128
    t2v = teacher_samples(bench, t2i=None, video="toy_t2v", steps=2, seeds=1)
    assert list(factored) == list(bench.prompts) == list(t2v)
    for p in bench.prompts:
        assert factored[p].shape == (2, 9, 3, 32, 32) and t2v[p].shape == (1, 9, 3, 32, 32)
        assert not torch.equal(factored[p][0], factored[p][1])  # one video per seed
        assert not torch.allclose(factored[p][0], t2v[p][0], atol=1e-3)  # different teachers
    with pytest.raises(ValueError, match="image-to-video"):
        teacher_samples(bench, t2i="toy_t2i", video="toy_t2v", steps=1, seeds=1)
