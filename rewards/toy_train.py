"""The toy rewards' training recipe, their held-out ranking accuracy, and the command that ships them.

``python -m rewards.toy_train --kind image|video --steps N --out turbo/toy/weights/<asset>``

Positives: ToyWorld clips of the training split with their captions; symmetric InfoNCE with
in-batch negatives plus one hard-negative caption per clip (one attribute changed), as before.

Negatives (``robust=True``, rewards/toy_negatives.py), so that the reward ranks *generated* videos and a small pixel pattern
does not buy a high score. Each is paired with a target caption and must match a learned "none"
text embedding better than any caption (cross-entropy over [captions, none] with target none):

- ``noise``: uniform pixels, or Gaussian noise around the background;
- ``blank``: the background alone (brightness jittered);
- ``blur``: a real clip under a strong Gaussian blur (the object smeared to a smudge);
- ``partial``: a real clip whose object is erased from a random part of its frames (video model);
- ``adversarial``: a persistent pool of videos pushed up the *current* model's score for their
  target caption by signed-gradient steps (as reward feedback or a reward-only attack would
  push them), refined a few steps more every training step and restarted from blank or noise
  after ``pool_age`` refinements: the attacks the model has to learn to refuse, and keeps seeing
  as it changes.

Real clips must prefer their caption over "none" too, so the none embedding cannot absorb them.
The score the reward returns is unchanged: the cosine with the caption (rewards/toy.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rewards.toy import ATTRIBUTES, ToyDualEncoder, ToyImageText, ToyReward, ToyRewardConfig, ToyVideoText
from rewards.toy_negatives import AttackPool, simple_negatives  # noqa: F401 (re-exported)
from turbo.toy import assets
from turbo.toy.split import split_specs, stream_seed, training_specs
from turbo.toy.world import COLOURS, MOTIONS, SHAPES, ObjectSpec, SceneSpec, ToyWorld

VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": tuple(MOTIONS)}


def _swap(obj: ObjectSpec, attribute: str, value: str) -> SceneSpec:
    return SceneSpec((dataclasses.replace(obj, **{attribute: value}),))


def one_attribute_negative(spec: SceneSpec, attributes: Sequence[str], allowed: set[SceneSpec] | None,
                           generator: torch.Generator) -> SceneSpec:
    """A scene differing from one-object ``spec`` in one of ``attributes`` (picked at random), kept
    inside ``allowed`` when given (an attribute with no allowed alternative is skipped)."""
    (obj,) = spec.objects
    order = [attributes[i] for i in torch.randperm(len(attributes), generator=generator).tolist()]
    for attribute in order:
        options = [_swap(obj, attribute, v) for v in VALUES[attribute] if v != getattr(obj, attribute)]
        if allowed is not None:
            options = [o for o in options if o in allowed]
        if options:
            return options[int(torch.randint(len(options), (), generator=generator))]
    raise ValueError(f"no allowed one-attribute negative of {spec.caption()!r} in {list(attributes)}")


def contrastive_loss(visual: Tensor, text: Tensor, logit_scale: Tensor, keys: Sequence[str],
                     none: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (CLIP) with in-batch negatives and extra negative captions.

    visual: B,D; text: T,D (T >= B, row i < B is visual i's caption, rows >= B are extra negatives);
    keys: T text keys, equal keys are positives of each other (duplicates in a batch are not
    negatives). Per row: -log(sum over positives of softmax) = logsumexp(all) - logsumexp(positives).
    ``none`` (D): the "no caption" embedding, one more wrong answer for every clip.
    """
    batch = visual.shape[0]
    texts = text if none is None else torch.cat([text, none[None]])
    logits = logit_scale.exp() * F.normalize(visual, dim=-1) @ F.normalize(texts, dim=-1).T  # B,T(+1)
    same = torch.tensor([[a == b for b in keys] + ([False] if none is not None else []) for a in keys[:batch]],
                        device=visual.device)

    def nll(l: Tensor, pos: Tensor) -> Tensor:
        return (l.logsumexp(-1) - l.masked_fill(~pos, float("-inf")).logsumexp(-1)).mean()
    return (nll(logits, same) + nll(logits[:, :batch].T, same[:, :batch].T)) / 2


def none_loss(visual: Tensor, text: Tensor, none: Tensor, logit_scale: Tensor) -> Tensor:
    """Negative videos (N,D) against [their target captions' texts (N,D) ..., none]: each must pick none."""
    texts = torch.cat([text, none[None]])
    logits = logit_scale.exp() * F.normalize(visual, dim=-1) @ F.normalize(texts, dim=-1).T  # N, N + 1
    return F.cross_entropy(logits, torch.full((visual.shape[0],), texts.shape[0] - 1, device=visual.device))


# --- training ---------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: ToyDualEncoder
    losses: list[float]
    seconds: float
    settings: dict


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps (independent of ``steps``, so a short re-run repeats the
    first losses of a long one), then cosine decay to 0.1 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_toy_reward(
    kind: str, steps: int, seed: int = 0, *, batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 0.01,
    warmup: int = 20, noise: float = 0.03, log_every: int = 0, robust: bool = False, negatives: int = 16,
    pool_size: int = 256, attack_steps: int = 3, attack_step_size: float = 0.02, pool_age: int = 40,
    hinge: float = 0.0, align: float = 0.0,
) -> TrainResult:
    """Train a toy reward of ``kind`` for ``steps`` AdamW steps on training-split ToyWorld clips
    (9 frames, 32x32; see the module doc). The image model sees one random frame of each clip.
    ``noise``: each clip gets Gaussian pixel noise of a std drawn from U(0, noise), for robustness
    to imperfect generated videos. ``robust``: also train on negatives (module doc): ``negatives``
    simple ones and ``negatives`` from the attack pool per step; ``hinge`` weighs an extra
    ``relu(cos(negative, its caption))`` term, which bounds the score a negative gets in absolute
    terms (the softmax over [captions, none] only ranks it). ``align`` weighs ``1 - cos(clip, its
    caption)`` on the real clips: it pulls their scores towards the maximum of 1, so that the real
    videos' median leaves little room above it for a video that does not show the caption. Deterministic given the arguments
    (and the torch build and thread count). Returns the trained model, the loss of every step,
    wall time and the settings."""
    config = ToyRewardConfig.for_kind(kind)
    specs = training_specs()
    allowed = set(specs)
    by_caption = {s.caption(): s for s in specs}
    world = ToyWorld(num_frames=9, height=32, width=32, seed=seed, specs=specs)
    generator = torch.Generator().manual_seed(stream_seed("toy-reward", kind, seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ToyDualEncoder(config)
        none = nn.Parameter(torch.randn(config.embed_dim) * 0.02)  # "no caption": trained, not shipped
    opt = torch.optim.AdamW([*model.parameters(), none], lr=lr, weight_decay=weight_decay)
    negative_attributes = ("colour", "shape") if kind == "image" else ATTRIBUTES
    frames = 1 if kind == "image" else 9
    pool = (AttackPool(pool_size, frames, 32, sorted(by_caption), torch.Generator().manual_seed(seed + 1),
                       attack_step_size, pool_age) if robust else None)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        captions, clips, wrong = [], [], []
        for j in range(batch_size):
            caption, clip = world.sample(step * batch_size + j)
            captions.append(caption)
            clips.append(clip)
            wrong.append(one_attribute_negative(by_caption[caption], negative_attributes, allowed, generator).caption())
        video = torch.stack(clips)  # B,9,3,32,32
        if kind == "image":  # one random frame per clip
            pick = torch.randint(video.shape[1], (batch_size,), generator=generator)
            video = video[torch.arange(batch_size), pick][:, None]
        sigma = noise * torch.rand(batch_size, 1, 1, 1, 1, generator=generator)
        clean = video
        video = (video + sigma * torch.randn(video.shape, generator=generator)).clamp(0, 1)
        texts = captions + wrong
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup)
        visual = model.encode_visual(video)
        visual = visual[:, 0] if kind == "image" else visual
        text = model.encode_text(texts)
        loss = contrastive_loss(visual, text, model.logit_scale, [model.text_key(t) for t in texts],
                                none=none if robust else None)
        if align:
            loss = loss + align * (1 - (F.normalize(visual, dim=-1) * F.normalize(text[:batch_size], dim=-1)).sum(-1)).mean()
        if robust:
            simple = simple_negatives(clean[:negatives], generator, partial=kind == "video")
            attacked, targets = pool.refine(model, negatives, attack_steps)
            bad = torch.cat([simple, attacked])
            bad_visual = model.encode_visual(bad)
            bad_visual = bad_visual[:, 0] if kind == "image" else bad_visual
            bad_text = model.encode_text(captions[:negatives] + targets)
            loss = loss + none_loss(bad_visual, bad_text, none, model.logit_scale)
            if hinge:
                cos = (F.normalize(bad_visual, dim=-1) * F.normalize(bad_text, dim=-1)).sum(-1)
                loss = loss + hinge * F.relu(cos).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[{kind}] step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    settings = {"kind": kind, "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "warmup": warmup, "noise": noise,
                "num_frames": 9, "height": 32, "width": 32, "robust": robust}
    if robust:
        settings.update(negatives=negatives, pool_size=pool_size, attack_steps=attack_steps,
                        attack_step_size=attack_step_size, pool_age=pool_age, hinge=hinge)
    if align:
        settings.update(align=align)
    return TrainResult(model.eval(), losses, time.perf_counter() - start, settings)


# --- evaluation -------------------------------------------------------------------------------------

def ranking_accuracy(reward: ToyReward, attribute: str, specs: Sequence[SceneSpec] | None = None,
                     clips_per_spec: int = 8, seed: int = 1, all_alternatives: bool = False,
                     videos: dict[str, Tensor] | None = None) -> float:
    """Share of clips whose true caption scores strictly above a caption with a wrong ``attribute``.

    specs: one-object scenes to render (default: the held-out part of ``split_specs()``, never
    trained on), ``clips_per_spec`` clips each from ``ToyWorld(seed=seed)``, 9 frames at 32x32. The
    wrong caption is one random other value of the attribute, or with ``all_alternatives`` every
    other value (the clip then counts only if the true caption beats them all). ``videos``:
    caption -> N,F,3,H,W clips to rank instead of rendered ones (e.g. a teacher's samples).
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, found {attribute!r}")
    if videos is not None:
        from turbo.toy.world import parse_caption

        specs = [parse_caption(c) for c in videos]
    specs = list(split_specs()[1] if specs is None else specs)
    generator = torch.Generator().manual_seed(stream_seed("toy-reward-eval", attribute, seed))
    wins = total = 0
    for k, spec in enumerate(specs):
        if videos is not None:
            video = videos[spec.caption()]
        else:
            world = ToyWorld(num_frames=9, height=32, width=32, seed=seed, specs=[spec])
            video = torch.stack([world.sample(k * clips_per_spec + i)[1] for i in range(clips_per_spec)])
        (obj,) = spec.objects
        wrong = [v for v in VALUES[attribute] if v != getattr(obj, attribute)]
        if not all_alternatives:
            wrong = [wrong[int(torch.randint(len(wrong), (), generator=generator))]]
        candidates = [spec.caption()] + [_swap(obj, attribute, v).caption() for v in wrong]
        with torch.no_grad():
            scores = reward.score_candidates(video, candidates)  # clips_per_spec, 1 + len(wrong)
        wins += int((scores[:, :1] > scores[:, 1:]).all(1).sum())
        total += len(video)
    return wins / total


# --- the recipe's command line ------------------------------------------------------------------

def save_asset(model: ToyDualEncoder, folder: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` atomically (whole folder replaced,
    files with the umask's mode)."""
    from safetensors.torch import save_file

    from turbo.atomic import atomic_dir

    with atomic_dir(Path(folder)) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(model.config.to_json())
    return Path(folder)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rewards.toy_train", description="Train and ship a toy reward.")
    parser.add_argument("--kind", choices=("image", "video"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--robust", action="store_true", help="train on negatives too (module doc)")
    parser.add_argument("--pool-age", type=int, default=40, help="with --robust: refinements before an attack restarts")
    parser.add_argument("--negatives", type=int, default=16, help="with --robust: simple and attacked negatives per step")
    parser.add_argument("--hinge", type=float, default=0.0, help="with --robust: weight of relu(cos(negative, caption))")
    parser.add_argument("--attack-steps", type=int, default=3, help="with --robust: signed-gradient steps per pool "
                                                                    "refinement (each training step)")
    parser.add_argument("--attack-step-size", type=float, default=0.02, help="with --robust: the size of each")
    parser.add_argument("--align", type=float, default=0.0, help="weight of 1 - cos(real clip, its caption)")
    parser.add_argument("--out", required=True, help="asset folder, e.g. turbo/toy/weights/reward_image_text; "
                                                     "its parent's MANIFEST.json gets the entry")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train_toy_reward(args.kind, args.steps, args.seed, log_every=25, robust=args.robust, pool_age=args.pool_age,
                              negatives=args.negatives, hinge=args.hinge, attack_steps=args.attack_steps,
                              attack_step_size=args.attack_step_size, align=args.align)
    out = save_asset(result.model, args.out)
    reward = (ToyImageText if args.kind == "image" else ToyVideoText)(result.model)
    accuracy = {a: round(ranking_accuracy(reward, a), 4) for a in ATTRIBUTES}
    tail = result.losses[-10:]
    recipe = {
        "command": f"python -m rewards.toy_train --kind {args.kind} --steps {args.steps} --seed {args.seed}"
                   f"{f' --robust --pool-age {args.pool_age} --negatives {args.negatives} --hinge {args.hinge}' if args.robust else ''}"
                   f"{f' --attack-steps {args.attack_steps}' if args.robust and args.attack_steps != 3 else ''}"
                   f"{f' --attack-step-size {args.attack_step_size}' if args.robust and args.attack_step_size != 0.02 else ''}"
                   f"{f' --align {args.align}' if args.align else ''}"
                   f" --out {args.out} "
                   f"--threads {args.threads}",
        **result.settings, "threads": args.threads,
        "final_loss": round(result.losses[-1], 6), "final_loss_mean10": round(sum(tail) / len(tail), 6),
        "first_losses": [round(x, 6) for x in result.losses[:5]],
        "train_seconds": round(result.seconds, 1), "torch": torch.__version__,
        "heldout_ranking_accuracy": accuracy, "date": datetime.date.today().isoformat(),
    }
    assets.register(out.name, recipe, root=out.parent)
    print(json.dumps(recipe, indent=2))
    return recipe


if __name__ == "__main__":
    main()
