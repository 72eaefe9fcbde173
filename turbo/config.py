"""The one place where config nodes become objects.

Every ``_target_`` in ``conf/`` is instantiated through ``build``: it accepts only targets inside
this project's packages (a config cannot name arbitrary callables), and it turns the errors a
config can cause into one ``ConfigError`` that names the config key and says what was expected.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, MissingMandatoryValue, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

ALLOWED_TARGET_PREFIXES = ("turbo.", "rewards.", "distill.", "eval.")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong kind; the message names its key."""


def _check_targets(node: Any, key: str) -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise ConfigError(f"{key}._target_={target!r}: only targets inside {ALLOWED_TARGET_PREFIXES} "
                              f"can be instantiated from configs")
        for k in node.keys():
            if not str(k).startswith("_"):
                _check_targets(node._get_node(k), f"{key}.{k}")


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
    _check_targets(node, key)
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
