"""Fixtures shared by the reward tests."""

import json

import open_clip
import pytest


@pytest.fixture
def tiny_arch(tmp_path):
    """A tiny open_clip architecture (``tiny_clip_model``'s numbers) registered under a name, so the
    real loading paths (create_model_and_transforms with a local file, as for ViT-H-14 from /ckpts)
    run in a second."""
    name = "turbo-test-tiny-open-clip"
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    return name
