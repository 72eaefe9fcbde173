"""The held-out split of the toy world: which one-object scenes training may show.

It lives beside the world (not in eval/) so that training data (``distill.data``), the toy
rewards and ToyBench all read the same split: nothing trained here sees a held-out prompt.
"""

from __future__ import annotations

import hashlib

import torch

from turbo.toy.world import COLOURS, MOTIONS, SHAPES, SceneSpec, ToyWorld


def stream_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` by hashing, independent of any global RNG state."""
    digest = hashlib.blake2b(":".join(map(str, ("turbo.eval.toybench", *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def split_specs(seed: int = 0, heldout_fraction: float = 0.2) -> tuple[list[SceneSpec], list[SceneSpec]]:
    """``(training, held_out)``: the one-object specs of ``ToyWorld.specs()`` dealt in rounds.

    The (colour, shape) pairs are shuffled by ``seed``; round ``r`` gives pair ``p`` motion
    ``(p + r) mod 5`` (of a seeded order of motions), so each round holds every pair once and the
    motions equally often. The held-out part is the first ``round(heldout_fraction * 120)`` specs
    of that order: at 0.2, one round, i.e. every (colour, shape) pair with one motion it never has
    in training, while every colour, shape and motion is still seen in training.
    """
    specs = ToyWorld.specs()
    count = round(heldout_fraction * len(specs))
    if not 0 < count < len(specs):
        raise ValueError(f"heldout_fraction must leave both parts non-empty, found {heldout_fraction}")
    generator = torch.Generator().manual_seed(stream_seed("split", seed))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    pairs = [pairs[i] for i in torch.randperm(len(pairs), generator=generator).tolist()]
    motions = [list(MOTIONS)[i] for i in torch.randperm(len(MOTIONS), generator=generator).tolist()]
    by_key = {(o.colour, o.shape, o.motion): spec for spec in specs for o in spec.objects}
    dealt = [by_key[(c, s, motions[(p + r) % len(motions)])]
             for r in range(len(motions)) for p, (c, s) in enumerate(pairs)]
    held_out = dealt[:count]
    return [s for s in specs if s not in set(held_out)], held_out


def training_specs(seed: int = 0, heldout_fraction: float = 0.2) -> list[SceneSpec]:
    """The one-object specs a training set may use without showing a held-out prompt."""
    return split_specs(seed, heldout_fraction)[0]
