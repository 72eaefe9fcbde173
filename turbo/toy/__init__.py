"""A procedural captioned-video world (shapes, colours, motions) for CPU-sized experiments."""
