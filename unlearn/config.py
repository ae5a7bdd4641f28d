"""Hydra's `_target_` is the registry: a config group's choice names the class to build."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from unlearn.errors import ConfigError, UnlearnError
from unlearn.knobs import check_knobs


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config node; our own errors come out unwrapped so the user sees one clear message.

    The node's knobs are range-checked first against what its `_target_` declares (unlearn.knobs)."""
    check_node(node)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UnlearnError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def target_of(node: DictConfig) -> Any:
    """The class or function a node's `_target_` names (ConfigError if it does not exist)."""
    path = node.get("_target_") if isinstance(node, DictConfig) else None
    if not path:
        return None
    try:
        return get_object(str(path))
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{_where(node) or 'config'}._target_={path!r} does not name an importable class: {exc}") from None


def check_node(node: DictConfig) -> None:
    """Range-check a node's declared knobs (and, recursively, nested nodes with a `_target_`)."""
    if not isinstance(node, DictConfig):
        return
    target = target_of(node)
    if target is not None:
        try:
            resolved = plain(node)
        except (MissingMandatoryValue, InterpolationToMissingValueError) as exc:
            # The mandatory key itself (e.g. data.root), not the node that interpolates it.
            missing = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
            key = missing.group(1) if missing else (getattr(exc, "full_key", None) or _where(node))
            raise ConfigError(f"{key} has no value and needs one (give {key}=...)") from None
        check_knobs(target, {k: v for k, v in resolved.items() if not str(k).startswith("_")}, _where(node))
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_node(child)


def _where(node: DictConfig) -> str:
    try:
        return node._get_full_key(None) or ""
    except Exception:  # a node built outside a config tree has no path
        return ""


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(*overrides: str) -> DictConfig:
    """The config `python run.py <overrides>` runs, for scripts and tests (Hydra's compose API)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (for cache keys and result rows)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_choices(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse a `group=choice` override (or `group=a,b` sweep) naming no yaml of that config group, with the valid
    choices, before Hydra composes anything (Hydra's own message is many lines and exits 1)."""
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        group = conf_dir / key
        # Nested groups (hydra/launcher=joblib) also take choices that installed plugins provide: left to Hydra.
        if not key or "." in key or "/" in key or not group.is_dir() or not value or value[0] in "[{$'\"" or "(" in value:
            continue
        valid = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in valid and choice != "null":
                raise ConfigError(f"{key}={choice} is not a {key} config; valid: {', '.join(valid)}")

