"""Loading reward-model checkpoints from local files, with errors that say what is wrong.

``load_checkpoint_into(model, path, key=..., who=...)`` reads a state dict and copies it into
``model``. A missing file raises ``FileNotFoundError`` naming the path and the config key to
set; a state dict whose keys or shapes do not match raises one
:class:`CheckpointMismatchError` listing the first few missing, unexpected and mis-shaped keys
with their counts (torch's own strict-load error lists every key, hundreds of lines for a
ViT-H). Nothing is ever downloaded.

Formats: ``.safetensors``; torch pickles (``.pt``, ``.bin``, ``.pth``, ...) read with
``weights_only=True`` only (a pickle of other objects is refused unless its config key
``<...>.allow_pickle=true`` allows it); TorchScript archives (OpenAI's CLIP ``ViT-L-14.pt``).
The state dict may be nested under ``"state_dict"``, ``"model"`` or ``"module"`` (HPSv2,
ViCLIP, DeepSpeed checkpoints).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

# Keys a training script wraps the weights in; unwrapped in this order, repeatedly.
NESTED_KEYS: tuple[str, ...] = ("state_dict", "model", "module")
# How many key names an error message shows per kind of mismatch.
SHOWN_KEYS = 5


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only full unpickling (which can run code) could read, not allowed by its config."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model it is loaded into.

    ``missing``: model keys the checkpoint lacks; ``unexpected``: checkpoint keys the model
    lacks; ``mismatched``: (key, checkpoint shape, model shape) triples. All sorted with layer
    numbers in numeric order (``blocks.2`` before ``blocks.10``).
    """

    def __init__(
        self,
        missing: Iterable[str],
        unexpected: Iterable[str],
        mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]],
        *,
        path: str | os.PathLike,
        key: str,
        who: str,
    ) -> None:
        self.missing = sorted(missing, key=_natural)
        self.unexpected = sorted(unexpected, key=_natural)
        self.mismatched = sorted(((k, tuple(a), tuple(b)) for k, a, b in mismatched), key=lambda m: _natural(m[0]))
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) {_first(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s) {_first(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in self.mismatched[:SHOWN_KEYS])
            more = f", ... {len(self.mismatched) - SHOWN_KEYS} more" if len(self.mismatched) > SHOWN_KEYS else ""
            parts.append(f"{len(self.mismatched)} shape mismatch(es) [{shown}{more}]")
        hint = _prefix_hint(self.missing, self.unexpected)
        super().__init__(
            f"{who}: checkpoint {str(path)!r} (config key {key}) does not match the model: "
            + "; ".join(parts)
            + (f". {hint}" if hint else ". Is it the checkpoint of this architecture?")
        )


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return "[" + ", ".join(keys[:SHOWN_KEYS]) + more + "]"


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """Suggest prefix_strip when the unexpected keys are the missing ones under a common prefix."""
    if not missing or not unexpected:
        return ""
    prefix = os.path.commonprefix(unexpected)
    prefix = prefix[: prefix.rfind(".") + 1]
    if prefix and sum(k[len(prefix):] in set(missing) for k in unexpected) * 2 >= len(unexpected):
        return f"The checkpoint's keys carry the prefix {prefix!r}: pass prefix_strip=({prefix!r},)"
    return ""


def check_keys(
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    *,
    path: str | os.PathLike,
    key: str,
    who: str,
) -> None:
    """Raise :class:`CheckpointMismatchError` if any key is missing, unexpected or mis-shaped.

    For loaders that compare keys themselves, e.g. transformers' ``from_pretrained(...,
    output_loading_info=True)`` (which would otherwise silently re-initialise missing weights).
    """
    missing, unexpected, mismatched = list(missing), list(unexpected), list(mismatched)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, path=path, key=key, who=who)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``constants.pkl`` record (as torch.load checks)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def read_state_dict(
    path: str | os.PathLike,
    *,
    key: str,
    who: str,
    prefix_strip: tuple[str, ...] = ("module.",),
    allow_pickle: bool = False,
) -> dict[str, Tensor]:
    """The tensors of a local checkpoint file as a flat ``{name: tensor}`` dict on the CPU.

    Unwraps ``NESTED_KEYS``; strips each prefix in ``prefix_strip`` that *every* key carries
    (DDP's ``module.``). Torch pickles are read with ``weights_only=True``: one holding Python
    objects besides tensors (e.g. an ``argparse.Namespace`` of training options, as some official
    checkpoints do) is refused, naming the file and the config key that allows it
    (``<...>.allow_pickle=true``, off by default): full unpickling can run any code in the file.
    TorchScript archives are read with ``torch.jit.load``, whose unpickler builds TorchScript
    objects only (no Python callables).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{who}: checkpoint {str(path)!r} not found; set {key}= to a local .safetensors/.pt/.bin/.pth "
            "file (nothing is downloaded)"
        )
    if path.suffix != ".safetensors" and _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path), device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            allow_key = key.rsplit(".", 1)[0] + ".allow_pickle" if "." in key else "allow_pickle"
            if not allow_pickle:
                first = str(err).strip().splitlines()[-1][:160] if str(err).strip() else type(err).__name__
                raise UnsafeCheckpointError(
                    f"{who}: {str(path)!r} (config key {key}) holds Python objects besides tensors, which "
                    f"torch.load(weights_only=True) refuses ({first}); nothing in it was run. If you trust "
                    f"the file, set {allow_key}=true"
                ) from None
            warnings.warn(
                f"{who}: {str(path)!r} holds Python objects besides tensors; reading it with "
                f"torch.load(weights_only=False) because {allow_key}=true. Only load checkpoints you trust.",
                stacklevel=2,
            )
            state = torch.load(path, map_location="cpu", weights_only=False)
    unwrapped = True
    while unwrapped and isinstance(state, Mapping):
        unwrapped = False
        for nested in NESTED_KEYS:
            if isinstance(state.get(nested), Mapping):
                state, unwrapped = state[nested], True
                break
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{who}: {str(path)!r} (config key {key}) holds no state dict, found {type(state).__name__}")
    others = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if others:
        raise ValueError(
            f"{who}: {str(path)!r} (config key {key}) is not a state dict of tensors: "
            f"{len(others)} non-tensor entries {_first(sorted(map(str, others)))}"
        )
    state = dict(state)
    for prefix in prefix_strip:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_checkpoint_into(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    key: str,
    who: str,
    prefix_strip: tuple[str, ...] = ("module.",),
    ignore: tuple[str, ...] = (),
    allow_pickle: bool = False,
    rename: Callable[[str], str] | None = None,
) -> None:
    """Copy the weights in ``path`` into ``model`` (in place, keeping the model's dtypes and device).

    key: the config key that names ``path`` (e.g. ``reward.hpsv2.model.checkpoint``), used in
    errors; who: the caller, e.g. ``"reward 'hpsv2'"``. ``ignore``: checkpoint keys to drop
    before comparing — exact names, or prefixes ending in ``"."``; ``rename``: maps the file's
    remaining keys to the model's names. Every other key must match
    the model's state dict exactly in name and shape, or :class:`CheckpointMismatchError` is
    raised and the model is left untouched.
    """
    state = read_state_dict(path, key=key, who=who, prefix_strip=prefix_strip, allow_pickle=allow_pickle)
    state = {k: v for k, v in state.items() if not _ignored(k, ignore)}
    if rename is not None:  # the file's layout -> the model's names (e.g. rewards.image_reward_model.from_official)
        state = {rename(k): v for k, v in state.items()}
    expected = model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    check_keys(expected.keys() - state.keys(), state.keys() - expected.keys(), mismatched, path=path, key=key, who=who)
    model.load_state_dict(state, strict=True)


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in ignore)
