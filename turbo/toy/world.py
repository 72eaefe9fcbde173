"""A procedural captioned-video world: coloured shapes moving on a dark background.

Captions come from a tiny grammar, so an evaluator can read the truth back
out of a caption (``parse_caption``) and out of the pixels (exact colours,
straight-line motion)::

    a red circle moving left
    a blue square standing still
    an orange triangle moving up and a green circle moving right

Rendering is vectorised torch (no PIL) and deterministic: ``ToyWorld.sample(i)``
depends only on ``(seed, i)``.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

# Exact RGB in [0, 1]; rendered object pixels equal these values bit for bit.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit direction (dx, dy) in image coordinates: y grows downwards, so "up" is -y.
MOTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
BACKGROUND: tuple[float, float, float] = (0.1, 0.1, 0.1)

# Object size (circle diameter, square side, triangle base and height) as a
# fraction of the frame's shorter side.
SIZE_RANGE: tuple[float, float] = (0.2, 0.4)
# Distance travelled over the clip, as a fraction of the room the object has
# along its axis of motion: large enough to see, small enough to stay in frame.
TRAVEL_RANGE: tuple[float, float] = (0.4, 0.9)

ARTICLES: tuple[str, ...] = ("a", "an")
CONJUNCTION = "and"


class CaptionError(ValueError):
    """A caption outside the toy world's grammar."""


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a colour from ``COLOURS``, a shape from ``SHAPES``, a motion from ``MOTIONS``."""

    colour: str
    shape: str
    motion: str

    def __post_init__(self) -> None:
        fields = (("colour", self.colour, COLOURS), ("shape", self.shape, SHAPES), ("motion", self.motion, MOTIONS))
        for kind, value, allowed in fields:
            if value not in allowed:
                raise CaptionError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")

    def caption(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        action = "standing still" if self.motion == "still" else f"moving {self.motion}"
        return f"{article} {self.colour} {self.shape} {action}"


@dataclass(frozen=True)
class SceneSpec:
    """What a clip shows: one or more objects, drawn in order (later ones on top)."""

    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if not self.objects:
            raise CaptionError("a scene needs at least one object, found none")

    def caption(self) -> str:
        return f" {CONJUNCTION} ".join(obj.caption() for obj in self.objects)


def _expect(word: str | None, allowed, what: str, caption: str) -> str:
    if word not in allowed:
        found = "the end of the caption" if word is None else repr(word)
        raise CaptionError(f"caption {caption!r}: expected {what} ({', '.join(allowed)}), found {found}")
    return word


def _parse_object(words: list[str], caption: str) -> ObjectSpec:
    """Parse ``a <colour> <shape> (moving <direction> | standing still)``."""
    words = words + [None] * (5 - len(words))  # pad so a short clause reports what is missing
    _expect(words[0], ARTICLES, "an article", caption)
    colour = _expect(words[1], COLOURS, "a colour", caption)
    shape = _expect(words[2], SHAPES, "a shape", caption)
    verb = _expect(words[3], ("moving", "standing"), "a verb", caption)
    directions = ("still",) if verb == "standing" else tuple(m for m in MOTIONS if m != "still")
    motion = _expect(words[4], directions, f"a motion after {verb!r}", caption)
    if len(words) > 5:
        _expect(words[5], (CONJUNCTION,), f"{CONJUNCTION!r} or the end of the caption", caption)
    return ObjectSpec(colour, shape, motion)


def parse_caption(caption: str) -> SceneSpec:
    """Read a caption back into a SceneSpec; ``parse_caption(spec.caption()) == spec``.

    Case and runs of whitespace are ignored. Raises CaptionError naming the
    offending word and the words allowed in its place.
    """
    words = caption.lower().split()
    clauses: list[list[str]] = [[]]
    for word in words:
        if word == CONJUNCTION:
            clauses.append([])
        else:
            clauses[-1].append(word)
    return SceneSpec(tuple(_parse_object(clause, caption) for clause in clauses))


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _choice(options, generator: torch.Generator):
    options = list(options)
    return options[int(torch.randint(len(options), (), generator=generator))]


class ToyWorld:
    """Captioned clips of ``max_objects`` or fewer shapes; ``F,3,H,W`` float32 in [0, 1]."""

    def __init__(
        self, num_frames: int = 16, height: int = 32, width: int = 32, max_objects: int = 1, seed: int = 0,
        specs: list[SceneSpec] | None = None,
    ) -> None:
        if num_frames < 1 or height < 8 or width < 8:
            raise ValueError(
                f"ToyWorld needs num_frames >= 1 and height, width >= 8, found {num_frames=}, {height=}, {width=}"
            )
        if not 1 <= max_objects <= len(COLOURS):
            raise ValueError(
                f"ToyWorld max_objects must be in [1, {len(COLOURS)}] (one colour each), found {max_objects}"
            )
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_objects, self.seed = max_objects, seed
        if specs is not None and (not specs or max_objects != 1):
            raise ValueError("ToyWorld specs= restricts one-object scenes: it needs max_objects=1 and a non-empty list")
        self.allowed = None if specs is None else list(specs)

    @staticmethod
    def specs() -> list[SceneSpec]:
        """Every one-object scene (colour x shape x motion), in a fixed order."""
        return [SceneSpec((ObjectSpec(c, s, m),)) for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)]

    def sample_spec(self, generator: torch.Generator) -> SceneSpec:
        """1..max_objects objects; in a multi-object scene the colours differ so each object is identifiable.
        With ``specs`` given at construction, one of those, uniformly."""
        if self.allowed is not None:
            return self.allowed[int(torch.randint(len(self.allowed), (), generator=generator))]
        count = int(torch.randint(1, self.max_objects + 1, (), generator=generator))
        colours = [list(COLOURS)[i] for i in torch.randperm(len(COLOURS), generator=generator)[:count].tolist()]
        return SceneSpec(tuple(ObjectSpec(c, _choice(SHAPES, generator), _choice(MOTIONS, generator)) for c in colours))

    def render(self, spec: SceneSpec, generator: torch.Generator) -> Tensor:
        """Draw ``spec``: ``F,3,H,W`` float32 in [0, 1].

        Each object gets a random size (``SIZE_RANGE``), start position and a
        constant speed in pixels/frame chosen so it stays wholly inside the
        frame for the whole clip. Edges are hard (no anti-aliasing), so every
        pixel of an object is exactly its ``COLOURS`` value unless a later
        object covers it.
        """
        F, H, W = self.num_frames, self.height, self.width
        video = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1).expand(F, 3, H, W).clone()
        # Pixel centres, so a shape centred on the frame is drawn symmetrically.
        ys = torch.arange(H, dtype=torch.float64).view(1, H, 1) + 0.5
        xs = torch.arange(W, dtype=torch.float64).view(1, 1, W) + 0.5
        t = torch.arange(F, dtype=torch.float64).view(F, 1, 1)
        for obj in spec.objects:
            radius = _uniform(*SIZE_RANGE, generator) * min(H, W) / 2
            dx, dy = MOTIONS[obj.motion]
            # Room the centre has along each axis while keeping the object in frame.
            room_x, room_y = W - 2 * radius, H - 2 * radius
            travel = _uniform(*TRAVEL_RANGE, generator) * (room_x if dx else room_y)
            speed = travel / max(F - 1, 1)
            # Start far enough from the edge it moves towards to fit the whole path.
            x0 = radius + _uniform(0, room_x - (travel if dx else 0), generator)
            y0 = radius + _uniform(0, room_y - (travel if dy else 0), generator)
            if dx < 0:
                x0 = W - x0  # mirror: start near the right, move left
            if dy < 0:
                y0 = H - y0
            cx, cy = x0 + dx * speed * t, y0 + dy * speed * t  # F,1,1
            mask = _shape_mask(obj.shape, xs - cx, ys - cy, radius)  # F,H,W
            colour = torch.tensor(COLOURS[obj.colour], dtype=torch.float32).view(1, 3, 1, 1)
            video = torch.where(mask.unsqueeze(1), colour, video)
        return video

    def sample(self, index: int) -> tuple[str, Tensor]:
        """The ``index``-th clip: ``(caption, F,3,H,W float32 in [0, 1])``, a function of (seed, index) only."""
        if index < 0:
            raise IndexError(f"ToyWorld.sample index must be >= 0, found {index}")
        generator = torch.Generator().manual_seed(_derive_seed(self.seed, index))
        spec = self.sample_spec(generator)
        return spec.caption(), self.render(spec, generator)


def _shape_mask(shape: str, x: Tensor, y: Tensor, radius: float) -> Tensor:
    """Boolean mask of a shape, given pixel offsets ``x, y`` from its centre (broadcast to F,H,W)."""
    if shape == "circle":
        return x * x + y * y <= radius * radius
    if shape == "square":
        return (x.abs() <= radius) & (y.abs() <= radius)
    if shape == "triangle":
        # Apex up, base down, base width = height = 2 * radius.
        return (y <= radius) & (x.abs() <= (y + radius) / 2)
    raise CaptionError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")


def _derive_seed(seed: int, index: int) -> int:
    """A 64-bit seed from (seed, index) by hashing, so nearby (seed, index) pairs share no stream."""
    digest = hashlib.blake2b(f"turbo.toy.world:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
