"""The one place where config nodes become objects, and where a config is checked before anything runs.

Every ``_target_`` in ``conf/`` is instantiated through ``build``: it accepts only the targets in
``ALLOWED_TARGETS`` (model, reward, dataset, objective and benchmark constructors: none of them
writes files or unpickles), checked at every depth (nested nodes, ``_args_``, lists), and it turns
the errors a config can cause into one ``ConfigError`` that names the config key.

``check_config(cfg, schema)`` refuses unknown keys at every depth and out-of-range values, one line
naming the key: plain sections are described by a schema (a dict of ``Rule``s and sub-dicts), nodes
with a ``_target_`` by the target's own signature.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, MissingMandatoryValue, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

# An explicit list, not package prefixes: a prefix would also admit helpers such as
# turbo.atomic.atomic_write_text (writes any file) or rewards.loading.read_state_dict.
ALLOWED_TARGETS = frozenset({
    "distill.cache.CachedDataset", "distill.data.PromptDataset", "distill.data.ToyVideoDataset",
    "distill.data.VideoFolderDataset",
    "distill.objectives.cd.ConsistencyDistillation", "distill.objectives.diffusion.Diffusion",
    "distill.objectives.dmd2.DMD2", "distill.objectives.w2s.W2S",
    "eval.toybench.ToyBench",
    "rewards.aesthetic.aesthetic_reward", "rewards.clip.open_clip_reward", "rewards.clip.tiny_clip_reward",
    "rewards.hpsv2.hpsv2_reward", "rewards.hpsv2.tiny_hpsv2_reward", "rewards.image_reward.image_reward",
    "rewards.internvideo2.internvideo2_reward", "rewards.mixture.build_mixture", "rewards.pickscore.pickscore_reward",
    "rewards.toy.load_toy_reward", "rewards.viclip.viclip_reward",
    "turbo.i2v.load_image_encoder", "turbo.i2v.tiny_clip_vision",
    "turbo.models.load_backbone", "turbo.models.load_text_encoder", "turbo.models.load_vae",
    "turbo.models.tiny_clip_text_encoder", "turbo.models.tiny_hunyuan", "turbo.models.tiny_hunyuan_text_encoder",
    "turbo.models.tiny_hunyuan_vae", "turbo.models.tiny_sd3", "turbo.models.tiny_sd3_text_encoder",
    "turbo.models.tiny_sd_vae", "turbo.models.tiny_sdxl_text_encoder", "turbo.models.tiny_text_encoder",
    "turbo.models.tiny_unet2d", "turbo.models.tiny_unet3d", "turbo.models.tiny_wan", "turbo.models.tiny_wan_vae",
    "turbo.schedule.FlowSchedule", "turbo.schedule.VPSchedule",
    "torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD", "bitsandbytes.optim.AdamW8bit",
    "turbo.toy.models.shipped_backbone", "turbo.toy.models.shipped_text_encoder", "turbo.toy.models.toy_text_encoder",
    "turbo.toy.models.toy_vae", "turbo.toy.models.toy_wan",
})
# Hydra's own keys inside a node with a _target_
_META_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}


def compose_config(name: str, overrides: list[str] | tuple[str, ...] = (), *, hydra: bool = False) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` as the command line would compose it (scripts,
    benchmarks and tests); ``hydra=True`` keeps the ``hydra`` node (launcher, sweeper)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong kind; the message names its key."""


def _join(key: str, k: Any) -> str:
    return f"{key}.{k}" if key else str(k)


def _children(node: Any, key: str):
    """(key, child node) pairs of a DictConfig / ListConfig, without resolving interpolations."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            yield _join(key, k), node._get_node(k)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield f"{key}[{i}]", node._get_node(i)


def check_targets(node: Any, key: str) -> None:
    """Every ``_target_`` under ``node``, at any depth (``_args_``, lists, dict values), is allowed."""
    if isinstance(node, DictConfig) and "_target_" in node:
        target = node._get_node("_target_")._value()
        if target not in ALLOWED_TARGETS:
            raise ConfigError(f"{key}._target_={target!r}: not an allowed target; configs can instantiate only "
                              f"turbo's own constructors (turbo.config.ALLOWED_TARGETS)")
    for child_key, child in _children(node, key):
        check_targets(child, child_key)


def missing_keys(node: Any, key: str) -> list[str]:
    """Full keys under ``node`` whose value is '???', directly or through an interpolation
    (reported as the key the user must set, e.g. ``model.path`` for ``${model.path}``)."""
    found: list[str] = []
    if isinstance(node, (DictConfig, ListConfig)):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for k in keys:
            try:
                child = node[k]
            except MissingMandatoryValue:
                found.append(f"{key}.{k}" if key else str(k))
                continue
            except InterpolationToMissingValueError as e:  # "...Missing mandatory value: model.path"
                found.append(str(e).split("Missing mandatory value: ")[-1].split()[0])
                continue
            found += missing_keys(child, f"{key}.{k}" if key else str(k))
    return sorted(set(found))


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate ``node`` (found at config key ``key``), passing ``kwargs`` through."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key}: expected a config with a _target_, found {OmegaConf.to_yaml(node) if isinstance(node, DictConfig) else node!r}")
    check_targets(node, key)
    missing = missing_keys(node, key)
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set (found '???'), e.g. on the command line: {missing[0]}=...")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, (ConfigError, FileNotFoundError)):
            raise cause from None
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(f"{key}: {cause} (check the keys under {key})") from None
        if isinstance(cause, MissingMandatoryValue):
            raise ConfigError(f"{key}: {cause}") from None
        if isinstance(cause, ValueError):
            raise cause from None
        raise


# --- schemas: every key known, every value in range ------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A leaf of a schema: the value's types (None allowed if ``nullable``) and a range test."""

    types: tuple[type, ...]
    ok: Callable[[Any], bool] | None = None
    expect: str = ""
    nullable: bool = False

    def check(self, value: Any, key: str) -> None:
        if value is None:
            if not self.nullable:
                raise ConfigError(f"{key}=null: expected {self.expect or _names(self.types)}")
            return
        if isinstance(value, bool) and bool not in self.types:  # True is an int to Python, not to a config
            raise ConfigError(f"{key}={value}: expected {self.expect or _names(self.types)}")
        if not isinstance(value, self.types) or (self.ok is not None and not self.ok(value)):
            raise ConfigError(f"{key}={value!r}: expected {self.expect or _names(self.types)}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def positive_int(expect: str = "an integer >= 1", nullable: bool = False) -> Rule:
    return Rule((int,), lambda v: v >= 1, expect + (" or null" if nullable else ""), nullable)


def number(ok: Callable[[float], bool] = math.isfinite, expect: str = "a finite number", nullable: bool = False) -> Rule:
    return Rule((int, float), lambda v: math.isfinite(v) and ok(v), expect, nullable)


BOOL = Rule((bool,), expect="true or false")
STRING = Rule((str,), expect="a string")
OPTIONAL_STRING = Rule((str,), expect="a string or null", nullable=True)
STRINGS = Rule((list, tuple), lambda v: all(isinstance(s, str) for s in v), "a list of strings")
ANY = Rule((object,), nullable=True)
CRF = Rule((int,), lambda v: 0 <= v <= 51, "an integer in 0..51 (libx264's constant rate factor; 0 is lossless)")


@dataclass(frozen=True)
class Target:
    """A node with a ``_target_``: its keys are the target's parameters (``null`` allowed if nullable)."""

    nullable: bool = False


@dataclass(frozen=True)
class Section:
    """A plain section whose keys are listed in ``schema`` (values not listed as required may be absent)."""

    schema: dict
    nullable: bool = False


def check_config(cfg: DictConfig, schema: dict, key: str = "") -> None:
    """Refuse unknown keys and bad values under ``cfg`` as ``schema`` describes them (one ConfigError)."""
    _check_section(cfg, Section(schema), key)


def _value(node: DictConfig, k: str, key: str) -> Any:
    try:
        value = node[k]
    except (MissingMandatoryValue, InterpolationToMissingValueError):
        return "???"  # reported, with the key to set, by build()/missing_keys
    except Exception as e:  # a broken interpolation
        raise ConfigError(f"{key}: {e}".splitlines()[0]) from None
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _check_section(node: Any, section: Section, key: str) -> None:
    where = key or "the top level"
    if node is None:
        if section.nullable:
            return
        raise ConfigError(f"{key}=null: expected a section with keys {sorted(section.schema)}")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key}={node!r}: expected a section with keys {sorted(section.schema)}")
    for k in node.keys():
        child_key = _join(key, k)
        if k not in section.schema:
            raise ConfigError(f"{child_key}: unknown key; {where} has {', '.join(sorted(section.schema))}")
        _check(node, k, section.schema[k], child_key)


def _check(parent: DictConfig, k: str, spec: Any, key: str) -> None:
    if isinstance(spec, Rule):
        value = _value(parent, k, key)
        if value != "???":
            spec.check(value, key)
    elif isinstance(spec, Section):
        _check_section(parent[k], spec, key)
    elif isinstance(spec, Target):
        child = parent[k]
        if spec.nullable and (child is None or (isinstance(child, DictConfig) and not child)):
            return  # null, or an empty group option such as eval=none
        check_target_node(child, key)
    else:
        raise TypeError(f"schema of {key}: {spec!r} is not a Rule, Section or Target")


def check_target_node(node: Any, key: str) -> None:
    """The keys of a ``_target_`` node are parameters of its target (unless it takes ``**kwargs``);
    nested target nodes are checked alike, at any depth."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key}: expected a config with a _target_, found {node!r}")
    check_targets(node, key)
    from hydra._internal.utils import _locate  # hydra's own resolver of dotted paths (imports the module)

    try:
        target = _locate(node._target_)
    except ImportError as e:  # an optional package (bitsandbytes, ...) that is not installed
        raise ConfigError(f"{key}._target_={node._target_}: cannot be imported ({' '.join(str(e).split())}); "
                          f"install the package that provides it") from None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    free = not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for k in node.keys():
        if k in _META_KEYS:
            continue
        if not free and k not in params:
            names = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL and p != "self"]
            raise ConfigError(f"{_join(key, k)}: unknown key; {node._target_} takes {', '.join(names)}")
        _check_nested_targets(node._get_node(k), _join(key, k))


def _check_nested_targets(node: Any, key: str) -> None:
    if isinstance(node, DictConfig) and "_target_" in node:
        check_target_node(node, key)
        return
    for child_key, child in _children(node, key):
        _check_nested_targets(child, child_key)


def _device_ok(value: str) -> bool:
    head, _, index = value.partition(":")
    return value in ("auto", "cpu", "cuda", "mps") or (head == "cuda" and index.isdigit())


DEVICE = Rule((str,), _device_ok, "auto, cpu, cuda, cuda:N or mps")
VIDEO = Section({"num_frames": positive_int(), "height": positive_int(), "width": positive_int()})
# The `model` node of both apps (conf/model/*.yaml).
MODEL = Section({
    "name": STRING, "family": STRING, "time_embedding_module": OPTIONAL_STRING, "lora_targets": STRINGS,
    "path": OPTIONAL_STRING, "arch": ANY,
    "backbone": Target(), "vae": Target(), "text_encoder": Target(), "schedule": Target(),
    "i2v": Section({"mask_channels": positive_int(), "order": STRING, "pad": STRING,
                    "image_encoder": Target(nullable=True)}, nullable=True),
})


def report_errors(app: str, fn: Callable[[], Any], errors: tuple[type[BaseException], ...] = ()) -> Any:
    """Run ``fn``; an error a user can fix from its message (a ConfigError or other ValueError, a
    missing file, or one of ``errors``) prints one line ``<app>: error: ...`` and exits 1, without
    Hydra's traceback unless HYDRA_FULL_ERROR=1. Anything else is a bug and keeps its traceback."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, *errors) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{app}: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
