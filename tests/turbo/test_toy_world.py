"""The toy world: its grammar round-trips and its pixels tell the truth the caption states."""

import itertools

import pytest
import torch

from turbo.toy.world import (
    BACKGROUND,
    COLOURS,
    MOTIONS,
    SHAPES,
    CaptionError,
    ObjectSpec,
    SceneSpec,
    ToyWorld,
    parse_caption,
)


def _object_mask(video: torch.Tensor) -> torch.Tensor:
    """F,H,W bool: pixels that are not background."""
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    return (video != background).any(dim=1)


def _centroids(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (x, y) centroid of an F,H,W mask, in pixels."""
    F, H, W = mask.shape
    weights = mask.double()
    area = weights.sum(dim=(1, 2))
    xs = (weights * torch.arange(W, dtype=torch.float64)).sum(dim=(1, 2)) / area
    ys = (weights * torch.arange(H, dtype=torch.float64).view(H, 1)).sum(dim=(1, 2)) / area
    return xs, ys


def _render(spec: SceneSpec, seed: int = 0, **world_kwargs) -> torch.Tensor:
    return ToyWorld(**world_kwargs).render(spec, torch.Generator().manual_seed(seed))


def test_sample_is_a_function_of_seed_and_index_only():
    world = ToyWorld(max_objects=2, seed=3)
    caption, video = world.sample(7)
    assert video.shape == (16, 3, 32, 32) and video.dtype == torch.float32
    assert 0.0 <= video.min() and video.max() <= 1.0
    for i in range(7):  # drawing other samples first must not change sample 7
        world.sample(i)
    again_caption, again_video = ToyWorld(max_objects=2, seed=3).sample(7)
    assert again_caption == caption and torch.equal(again_video, video)
    assert not torch.equal(world.sample(8)[1], video)
    assert not torch.equal(ToyWorld(max_objects=2, seed=4).sample(7)[1], video)


def test_samples_cover_the_grammar():
    world = ToyWorld(max_objects=2)
    specs = [parse_caption(world.sample(i)[0]) for i in range(200)]
    assert {len(s.objects) for s in specs} == {1, 2}
    objects = [o for s in specs for o in s.objects]
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.motion for o in objects} == set(MOTIONS)
    # Two objects never share a colour, so each stays identifiable in the pixels.
    assert all(len({o.colour for o in s.objects}) == len(s.objects) for s in specs)


@pytest.mark.parametrize("colour", list(COLOURS))
def test_object_pixels_are_exactly_the_table_colour(colour):
    for shape in SHAPES:
        video = _render(SceneSpec((ObjectSpec(colour, shape, "right"),)))
        mask = _object_mask(video)
        assert mask.sum(dim=(1, 2)).min() >= 4  # visible in every frame
        object_pixels = video.permute(0, 2, 3, 1)[mask]
        assert torch.equal(object_pixels, torch.tensor(COLOURS[colour]).expand_as(object_pixels))
        background_pixels = video.permute(0, 2, 3, 1)[~mask]
        assert torch.equal(background_pixels, torch.tensor(BACKGROUND).expand_as(background_pixels))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("motion", list(MOTIONS))
def test_centroid_moves_in_the_named_direction(shape, motion):
    for seed in range(3):
        mask = _object_mask(_render(SceneSpec((ObjectSpec("white", shape, motion),)), seed=seed))
        xs, ys = _centroids(mask)
        if motion == "still":
            assert torch.equal(mask, mask[:1].expand_as(mask))
            continue
        # Written out, not read from MOTIONS, so a wrong table fails here. Image y grows downwards.
        axis, sign = {"right": ("x", 1), "left": ("x", -1), "down": ("y", 1), "up": ("y", -1)}[motion]
        along, across = (xs, ys) if axis == "x" else (ys, xs)
        # TRAVEL_RANGE guarantees >= 0.4 of the room (>= 7 px on 32 px frames); ask for 4.
        assert sign * (along[-1] - along[0]) > 4.0
        # Monotone up to rasterisation jitter of a sub-pixel step.
        assert (sign * along.diff()).min() > -0.25
        assert (across - across[0]).abs().max() < 0.5
        # In frame: the area only jitters with the sub-pixel position (down to 0.75 for a
        # 3 px triangle); an object half out of frame would drop it to 0.5 or less.
        area = mask.sum(dim=(1, 2)).double()
        assert area.min() / area.max() > 0.6


def test_two_object_caption_renders_both_colours():
    spec = parse_caption("a red circle moving left and a green triangle moving up")
    assert [o.colour for o in spec.objects] == ["red", "green"]
    for seed in range(5):
        video = _render(spec, seed=seed, max_objects=2)
        pixels = video.permute(0, 2, 3, 1).reshape(-1, 3)
        present = {tuple(p) for p in pixels.unique(dim=0).tolist()}
        expected = torch.tensor([COLOURS["red"], COLOURS["green"], BACKGROUND]).tolist()  # float32 values
        assert present == {tuple(p) for p in expected}


def test_caption_round_trips_for_every_spec():
    singles = ToyWorld.specs()
    assert len(singles) == len(COLOURS) * len(SHAPES) * len(MOTIONS) == len(set(singles))
    for spec in singles:
        assert parse_caption(spec.caption()) == spec
    for a, b in itertools.product(singles, repeat=2):
        pair = SceneSpec(a.objects + b.objects)
        assert parse_caption(pair.caption()) == pair


def test_caption_forms():
    assert SceneSpec((ObjectSpec("red", "circle", "left"),)).caption() == "a red circle moving left"
    assert SceneSpec((ObjectSpec("blue", "square", "still"),)).caption() == "a blue square standing still"
    assert SceneSpec((ObjectSpec("orange", "triangle", "up"),)).caption() == "an orange triangle moving up"
    assert parse_caption("  A Red  CIRCLE moving left ") == parse_caption("a red circle moving left")


@pytest.mark.parametrize(
    "caption, offending, allowed",
    [
        ("a purple circle moving left", "'purple'", "magenta"),
        ("a red hexagon moving left", "'hexagon'", "triangle"),
        ("a red circle moving still", "'still'", "left"),
        ("a red circle standing left", "'left'", "still"),
        ("a red circle moving left quickly", "'quickly'", "'and'"),
        ("the red circle moving left", "'the'", "an"),
        ("a red circle", "end of the caption", "moving"),
        ("a red circle moving left and", "end of the caption", "a, an"),
    ],
)
def test_caption_outside_the_grammar_names_the_word(caption, offending, allowed):
    with pytest.raises(CaptionError) as error:
        parse_caption(caption)
    message = str(error.value)
    assert offending in message and allowed in message


def test_specs_reject_unknown_words():
    with pytest.raises(CaptionError, match="purple"):
        ObjectSpec("purple", "circle", "left")
    with pytest.raises(CaptionError, match="at least one object"):
        SceneSpec(())
