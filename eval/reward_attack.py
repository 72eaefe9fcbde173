"""How hackable is a reward mixture? A reward-only attack on blank videos, judged by ToyBench.

For each held-out caption: start from a blank video (the toy world's background), then take
``steps`` Adam steps of gradient ascent on the reward mixture directly on the pixels (clamped to
[0, 1]), with the mixture's own frame selection (random frames for image-text terms, strided
frames for video-text terms), as reward feedback would push a student that can draw anything.
The attack *succeeds* on a caption when its mixture score reaches the median score of real
videos of that caption while ToyBench (analytic detectors, nothing shared with the rewards)
scores the attacked video below ``drew`` on that caption's Semantic: a high reward for a video
that does not show the thing. A reward that resists hacking has no successes.

    python -m eval.reward_attack                    # the shipped toy rewards (reward=toy), 24 captions
    python -m eval.reward_attack --captions 8 --steps 100 --out attack.md
    python -m eval.reward_attack --ranking           # and each reward's ranking accuracy on real / teacher videos
    python -m eval.reward_attack --ranking --t2i none --video toy_t2v   # ranked on the T2V teacher's samples
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch

from eval.toybench import ToyBench
from rewards.mixture import MixedReward
from turbo.toy.world import BACKGROUND


@dataclass
class AttackResult:
    caption: str
    attacked: float         # the mixture's score of the attacked video (sum of w_i * score_i)
    real_median: float      # median mixture score of real videos of the caption
    blank: float            # the score of the blank video the attack started from
    toybench_semantic: float
    success: bool           # attacked >= real_median and ToyBench semantic < drew


def mixture_score(reward: MixedReward, video: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
    """sum_i w_i * score_i of ``video`` (B,F,3,H,W in [0, 1]): minus the mixture's loss, per video."""
    plan = reward.plan(video.shape[1], generator)
    ids = reward.needed(plan)
    out = reward(video[:, ids], ids, plan, prompts)  # its loss is the batch mean; the scores are per video
    return sum(t.weight * out.scores[t.name] for t in reward.terms), out


def attack(reward: MixedReward, prompts: list[str], num_frames: int, height: int, width: int, steps: int = 300,
           lr: float = 0.01, seed: int = 0) -> torch.Tensor:
    """Blank videos (B,F,3,H,W) pushed up the mixture by Adam on the pixels; returns them in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1).expand(len(prompts), num_frames, 3, height, width).clone()
    video.requires_grad_(True)
    opt = torch.optim.Adam([video], lr=lr)
    for _ in range(steps):
        plan = reward.plan(num_frames, generator)
        ids = reward.needed(plan)
        loss = reward(video.clamp(0, 1)[:, ids], ids, plan, prompts).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            video.clamp_(0, 1)
    return video.detach()


@torch.no_grad()
def _scores(reward: MixedReward, video: torch.Tensor, prompts: list[str], seed: int, repeats: int = 4) -> torch.Tensor:
    """The mixture's per-video score, averaged over ``repeats`` frame selections."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([mixture_score(reward, video, prompts, generator)[0] for _ in range(repeats)]).mean(0)


def measure(reward: MixedReward, bench: ToyBench, steps: int = 300, lr: float = 0.01, real_per_caption: int = 8,
            drew: float = 50.0, seed: int = 0) -> list[AttackResult]:
    prompts = list(bench.prompts)
    world = bench.world
    attacked = attack(reward, prompts, world.num_frames, world.height, world.width, steps=steps, lr=lr, seed=seed)
    blank = torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1).expand_as(attacked).contiguous()
    attacked_scores = _scores(reward, attacked, prompts, seed + 1)
    blank_scores = _scores(reward, blank, prompts, seed + 1)
    real = bench.real_videos(videos_per_prompt=real_per_caption, seed=seed + 7)
    results = []
    for i, prompt in enumerate(prompts):
        clips = torch.stack(real[prompt])
        real_scores = _scores(reward, clips, [prompt] * len(clips), seed + 2)
        semantic = bench.evaluate({prompt: [attacked[i]]}).semantic
        median = statistics.median(real_scores.tolist())
        results.append(AttackResult(prompt, float(attacked_scores[i]), median, float(blank_scores[i]), semantic,
                                    bool(attacked_scores[i] >= median and semantic < drew)))
    return results


def table(results: list[AttackResult], steps: int, lr: float) -> str:
    n = len(results)
    wins = sum(r.success for r in results)
    lines = [f"Reward-only attack: {steps} Adam steps (lr {lr}) on the pixels of a blank video, {n} held-out captions",
             "", "| caption | blank | attacked | real median | ToyBench Semantic (attacked) | hacked |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.caption} | {r.blank:.3f} | {r.attacked:.3f} | {r.real_median:.3f} | "
                     f"{r.toybench_semantic:.1f} | {'yes' if r.success else ''} |")
    reached = sum(r.attacked >= r.real_median for r in results)
    lines += ["", f"Reached the real median: {reached} / {n}; hacked (reached it while ToyBench Semantic < 50): "
                  f"{wins} / {n}. Mean attacked {statistics.fmean(r.attacked for r in results):.3f} against real "
                  f"median {statistics.fmean(r.real_median for r in results):.3f}."]
    return "\n".join(lines)


def ranking(reward: MixedReward, teacher_videos: dict[str, torch.Tensor]) -> str:
    """Held-out ranking accuracy (true caption against one attribute changed) of each term's model,
    on real clips and on ``teacher_videos`` (caption -> N,F,3,H,W samples of a teacher)."""
    from rewards.toy import ATTRIBUTES
    from rewards.toy_train import ranking_accuracy

    lines = ["| reward | videos | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---|" * len(ATTRIBUTES)]
    for term in reward.terms:
        for name, videos in (("real held-out clips", None), ("teacher samples", teacher_videos)):
            accuracy = [ranking_accuracy(term.model, a, videos=videos) for a in ATTRIBUTES]
            lines.append(f"| {term.name} | {name} | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |")
    return "\n".join(lines)


def teacher_samples(bench: ToyBench, t2i: str | None = "toy_t2i_w128_15k", video: str = "toy_i2v_w128",
                    steps: int = 50, guidance: float = 3.0, seeds: int = 2) -> dict[str, torch.Tensor]:
    """``seeds`` videos per held-out caption from shipped toy teachers (their CFG samplers): the
    factored ``t2i`` -> ``video`` pipeline (Magic 1-For-1; the default, the strongest shipped
    teachers: ToyBench colour, shape and motion 100) or, with ``t2i=None``, the text-to-video
    model ``video``."""
    from eval.toy_teachers import toy_stage
    from turbo.pipeline import Sampler, t2i2v

    sampler = Sampler("teacher", steps=steps, guidance_scale=guidance)
    w, prompts, video_stage = bench.world, list(bench.prompts), toy_stage(video, sampler)
    image_stage = None if t2i is None else toy_stage(t2i, sampler)
    batches = []
    for s in range(seeds):
        if image_stage is None:
            batches.append(video_stage.video(prompts, w.num_frames, w.height, w.width, torch.Generator().manual_seed(s)))
        else:
            batches.append(t2i2v(image_stage, video_stage, prompts, s, w.num_frames, w.height, w.width))
    return {p: torch.stack([b[i] for b in batches]) for i, p in enumerate(prompts)}


def main(argv: list[str] | None = None) -> str:
    from turbo.config import build, compose_config

    parser = argparse.ArgumentParser(prog="python -m eval.reward_attack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", default="toy", help="a conf/reward config (default: toy)")
    parser.add_argument("--captions", type=int, default=24)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranking", action="store_true",
                        help="also: each reward's held-out ranking accuracy on real clips and on a teacher's samples")
    parser.add_argument("--t2i", default="toy_t2i_w128_15k",
                        help="--ranking's teacher draws the first frame with this T2I model config ('none': "
                             "--video is a text-to-video model that draws the whole clip)")
    parser.add_argument("--video", default="toy_i2v_w128",
                        help="--ranking's teacher's video model config: I2V after --t2i, or T2V (e.g. toy_t2v with --t2i none)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    cfg = compose_config("train", [f"reward={args.reward}"])
    reward = build(cfg.reward, "reward")
    bench = ToyBench(num_prompts=args.captions, num_frames=cfg.video.num_frames, height=cfg.video.height,
                     width=cfg.video.width)
    text = table(measure(reward, bench, steps=args.steps, lr=args.lr, seed=args.seed), args.steps, args.lr)
    if args.ranking:
        text += "\n\n"
        t2i = None if args.t2i.lower() == "none" else args.t2i
        teacher = args.video if t2i is None else f"{t2i} -> {args.video}"
        text += f"Ranking accuracy, true caption against one attribute changed (held-out captions; teacher: {teacher}):\n\n"
        text += ranking(reward, teacher_samples(bench, t2i=t2i, video=args.video))
    from eval.toy_teachers import emit

    return emit(text, args.out)


if __name__ == "__main__":
    main()
