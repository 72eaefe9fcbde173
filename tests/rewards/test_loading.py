"""rewards.loading: checkpoint formats, and one clear error for a checkpoint that does not fit."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rewards.loading import (CheckpointMismatchError, UnsafeCheckpointError, check_keys, load_checkpoint_into,
                             read_state_dict)

KEY = "reward.test.model.checkpoint"
WHO = "reward 'test'"
LAYOUTS = json.loads((Path(__file__).parent / "data" / "full_size_layouts.json").read_text())


def layout_mismatches(model: nn.Module, expected: dict) -> list[str]:
    """What differs between ``model``'s state dict and a layout in data/full_size_layouts.json."""
    state = model.state_dict()
    found = []
    if len(state) != expected["total_keys"]:
        found.append(f"{len(state)} keys, expected {expected['total_keys']}")
    total = sum(v.numel() for v in state.values())
    if "total_params" in expected and total != expected["total_params"]:
        found.append(f"{total} parameters, expected {expected['total_params']}")
    for key, shape in expected["keys"].items():
        if key not in state:
            found.append(f"{key} missing")
        elif list(state[key].shape) != shape:
            found.append(f"{key}: {list(state[key].shape)}, expected {shape}")
    return found


def small_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["flat", "state_dict", "model", "module_prefix", "nested"])
def test_torch_formats_load(tmp_path, wrap):
    source, target = small_model(1), small_model(0)
    state = source.state_dict()
    payload = {
        "flat": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},  # saved from DDP
        "nested": {"model": {"state_dict": state}},
    }[wrap]
    torch.save(payload, tmp_path / "ckpt.pth")
    load_checkpoint_into(target, tmp_path / "ckpt.pth", key=KEY, who=WHO)
    assert_same_weights(target, source)


def test_safetensors_and_half_precision_checkpoint(tmp_path):
    source, target = small_model(1), small_model(0)
    save_file({k: v.half().contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    load_checkpoint_into(target, tmp_path / "w.safetensors", key=KEY, who=WHO)
    # Weights keep the model's dtype (float32) and hold the fp16-rounded values.
    w = target[0].weight
    assert w.dtype == torch.float32 and torch.equal(w, source[0].weight.half().float())


def test_torchscript_archive_loads(tmp_path):
    # OpenAI's CLIP files (ViT-L-14.pt) are TorchScript archives, which torch.load(weights_only=True) refuses.
    source, target = small_model(1), small_model(0)
    torch.jit.script(source).save(str(tmp_path / "jit.pt"))
    load_checkpoint_into(target, tmp_path / "jit.pt", key=KEY, who=WHO)
    assert_same_weights(target, source)


class _Payload:
    """Unpickling this touches a file: the side effect the test looks for."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_of_objects_is_refused_naming_the_file_and_the_key_and_never_run(tmp_path):
    source, target = small_model(1), small_model(0)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": source.state_dict(), "args": _Payload(marker)}, tmp_path / "train.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"train\.pt.*config key reward\.x\.model\.checkpoint.*"
                       r"set reward\.x\.model\.allow_pickle=true"):
        load_checkpoint_into(target, tmp_path / "train.pt", key="reward.x.model.checkpoint", who=WHO)
    assert not marker.exists()
    assert not torch.equal(target[0].weight, source[0].weight)


def test_a_trusted_pickle_of_extras_loads_when_its_config_allows_it(tmp_path):
    source, target = small_model(1), small_model(0)
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "train.pt")
    with pytest.warns(UserWarning, match="weights_only=False.*allow_pickle=true"):
        load_checkpoint_into(target, tmp_path / "train.pt", key=KEY, who=WHO, allow_pickle=True)
    assert_same_weights(target, source)


def test_reward_configs_refuse_pickles_by_default(tmp_path):
    """Through a reward's own factory and config key (rewards.hpsv2.tiny_hpsv2_reward)."""
    from rewards.clip import tiny_clip_model
    from rewards.hpsv2 import tiny_hpsv2_reward

    marker = tmp_path / "pwned"
    torch.save({"state_dict": tiny_clip_model(1).state_dict(), "x": _Payload(marker)}, tmp_path / "hps.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"reward\.hpsv2\.model\.allow_pickle=true"):
        tiny_hpsv2_reward(checkpoint=str(tmp_path / "hps.pt"))
    assert not marker.exists()


def test_missing_and_unexpected_key_raise_one_error_listing_both(tmp_path):
    target = small_model(0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = small_model(1).state_dict()
    del state["1.bias"]
    state["3.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint_into(target, tmp_path / "bad.pt", key=KEY, who=WHO)
    msg = str(err.value)
    assert "1 missing key(s) [1.bias]" in msg and "1 unexpected key(s) [3.weight]" in msg
    assert WHO in msg and KEY in msg and "bad.pt" in msg
    assert err.value.missing == ["1.bias"] and err.value.unexpected == ["3.weight"]
    assert isinstance(err.value, ValueError)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())  # left untouched


def test_shape_mismatch_is_listed_with_both_shapes(tmp_path):
    state = small_model(1).state_dict()
    state["2.weight"] = torch.zeros(2, 5)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointMismatchError, match=r"1 shape mismatch\(es\) \[2.weight: checkpoint \(2, 5\) vs model \(2, 3\)\]"):
        load_checkpoint_into(small_model(0), tmp_path / "shape.pt", key=KEY, who=WHO)


def test_long_lists_show_the_first_few_and_a_count():
    missing = [f"blocks.{i}.weight" for i in range(12)]
    with pytest.raises(CheckpointMismatchError) as err:
        check_keys(missing, [], path="x.pt", key=KEY, who=WHO)
    msg = str(err.value)
    assert "12 missing key(s)" in msg and "... 7 more" in msg and "blocks.11.weight" not in msg
    check_keys([], [], [], path="x.pt", key=KEY, who=WHO)  # nothing wrong: no error


def test_prefixed_checkpoint_gets_a_hint_and_prefix_strip_fixes_it(tmp_path):
    source = small_model(1)
    torch.save({f"encoder.{k}": v for k, v in source.state_dict().items()}, tmp_path / "prefixed.pt")
    with pytest.raises(CheckpointMismatchError, match=r"prefix 'encoder\.': pass prefix_strip=\('encoder\.',\)"):
        load_checkpoint_into(small_model(0), tmp_path / "prefixed.pt", key=KEY, who=WHO)
    target = small_model(0)
    load_checkpoint_into(target, tmp_path / "prefixed.pt", key=KEY, who=WHO, prefix_strip=("encoder.",))
    assert_same_weights(target, source)


def test_ignore_drops_named_keys_and_prefixes(tmp_path):
    source = small_model(1)
    state = {**source.state_dict(), "input_resolution": torch.tensor(224), "text.a": torch.zeros(1), "text.b": torch.zeros(1)}
    torch.save(state, tmp_path / "extras.pt")
    target = small_model(0)
    load_checkpoint_into(target, tmp_path / "extras.pt", key=KEY, who=WHO, ignore=("input_resolution", "text."))
    assert_same_weights(target, source)
    with pytest.raises(CheckpointMismatchError, match="3 unexpected"):
        load_checkpoint_into(small_model(0), tmp_path / "extras.pt", key=KEY, who=WHO, ignore=("text",))  # no '.': exact only


def test_missing_file_names_the_path_and_the_config_key(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint_into(small_model(), path, key=KEY, who=WHO)
    assert str(path) in str(err.value) and f"set {KEY}=" in str(err.value) and WHO in str(err.value)


def test_not_a_state_dict_is_refused(tmp_path):
    torch.save({"weights": [1, 2, 3], "w": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="not a state dict of tensors: 1 non-tensor entries \\[weights\\]"):
        read_state_dict(tmp_path / "odd.pt", key=KEY, who=WHO)


def test_layout_comparison_catches_a_different_architecture():
    # The helper the full-size layout tests rely on must fail on a wrong layout, not only pass on a right one.
    expected = {"total_keys": 6, "total_params": (12 + 3) + (3 + 3) + (6 + 2), "keys": {"0.weight": [3, 4], "2.bias": [2]}}
    assert layout_mismatches(small_model(), expected) == []
    wider = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    assert layout_mismatches(wider, expected) == ["47 parameters, expected 29", "0.weight: [5, 4], expected [3, 4]"]
    assert layout_mismatches(nn.Sequential(nn.Linear(4, 3)), expected)[0] == "2 keys, expected 6"
