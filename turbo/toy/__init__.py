"""A procedural captioned-video world (shapes, colours, motions) for CPU-sized experiments."""

from turbo.toy.world import CaptionError, ObjectSpec, SceneSpec, ToyWorld, parse_caption

__all__ = ["CaptionError", "ObjectSpec", "SceneSpec", "ToyWorld", "parse_caption"]
