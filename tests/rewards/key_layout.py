"""Reading the written-down checkpoint key layouts in tests/rewards/data/*_keys.json."""

import json
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).parent / "data"


def expected_layout(name: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of every key in ``data/<name>_keys.json``, the 'repeated' families expanded.

    A family ``"prefix.{i}. (note)": {"indices": [a, b], "keys": {suffix: shape}}`` stands for
    ``prefix.format(i=i) + suffix`` for i in range(a, b).
    """
    data = json.loads((DATA / f"{name}_keys.json").read_text())
    layout = {k: tuple(v) for k, v in data["keys"].items()}
    for family, spec in data["repeated"].items():
        prefix = family.split(" ")[0]
        for i in range(*spec["indices"]):
            for suffix, shape in spec["keys"].items():
                layout[prefix.format(i=i) + suffix] = tuple(shape)
    assert len(layout) == data["total_keys"], (name, len(layout), data["total_keys"])
    return layout


def layout_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """name -> shape of every state-dict entry (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def meta_model(build):
    """``build()`` on the meta device: full-size architectures without allocating memory."""
    with torch.device("meta"):
        return build()
