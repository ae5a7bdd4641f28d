"""Hydra's `_target_` is the registry: a config group's choice names the class to build."""
from __future__ import annotations

import difflib
import inspect
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

    The node's knobs are range-checked first against what its `_target_` declares (unlearn.knobs). Keys its target
    names in `pipeline_keys` (a method's protocol settings: unlearn/protocol.py) are the pipeline's to read
    and are not passed to the constructor."""
    check_node(node)
    own = pipeline_keys(target_of(node))
    if any(key in node for key in own):  # resolved first: the copy has no parent to resolve interpolations against
        node = OmegaConf.create({k: v for k, v in plain(node).items() if k not in own})
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UnlearnError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def pipeline_keys(target: Any) -> tuple[str, ...]:
    """Keys of a node the pipeline reads, not its target's constructor (`target.pipeline_keys`; none by default)."""
    return tuple(getattr(target, "pipeline_keys", ()))


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
        settings = {k: v for k, v in resolved.items() if not str(k).startswith("_")}
        check_knobs(target, settings, _where(node))
        _check_names(target, node, {k: v for k, v in settings.items() if k not in pipeline_keys(target)})
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_node(child)


def did_you_mean(name: str, valid) -> str:
    """'; did you mean X?' for the closest of `valid` to `name`, else ''."""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_names(target: Any, node: DictConfig, settings: dict) -> None:
    """Refuse a key `target` does not take (`+method.lrr=0.1`: it would fail as a TypeError after the run dir was
    made) with the closest valid name, and a setting it needs that is null (`data=tofu` without `original.path`,
    which `model.name` follows), naming the key the user sets."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    params = signature.parameters
    where = _where(node)
    prefix = f"{where}." if where else ""
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for key in settings:
            if key not in params:
                valid = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                raise ConfigError(f"{prefix}{key} is not a setting of {where or 'this node'} "
                                  f"({getattr(target, '__name__', target)}){did_you_mean(key, valid)} "
                                  f"valid: {', '.join(valid)}")
    for key, param in params.items():
        if key in settings and settings[key] is None and param.default is inspect.Parameter.empty:
            source = node._get_node(key)._value() if isinstance(node._get_node(key)._value(), str) else None
            follows = re.fullmatch(r"\$\{([\w.]+)\}", source or "")
            hint = (f"; it follows {follows.group(1)}: give {follows.group(1)}=<a local folder or hub id>" if follows
                    else f"; give {prefix}{key}=...")
            raise ConfigError(f"{prefix}{key} is null, and {where or 'this node'} needs it{hint}")


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
                raise ConfigError(f"{key}={choice} is not a {key} config{did_you_mean(choice, valid)} "
                                  f"valid: {', '.join(valid)}")
    check_keys(overrides, conf_dir)


def check_keys(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse `key=value` naming no key of the composed config (`method.lrr=0.1`), with the closest valid key,
    before Hydra starts (its own error is a traceback-like page with exit 1). Sweeps are checked on their first
    value; `+key` (adding) is checked when the node is built; anything Hydra cannot parse is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
        return
    groups, keys = [], []
    for o in parsed:
        name = o.key_or_group
        if name.startswith("hydra") or o.type is not OverrideType.CHANGE:
            continue
        if (conf_dir / name).is_dir():
            first = next(iter(o.sweep_string_iterator()), None) if o.is_sweep_override() else o.value()
            groups.append(f"{name}={first}")
        else:
            keys.append(name)
    if not keys:
        return
    try:
        cfg = compose_config(*groups)
    except Exception:  # noqa: BLE001 - a composition error is Hydra's to report
        return
    missing = object()
    for key in keys:
        if OmegaConf.select(cfg, key, default=missing, throw_on_missing=False) is not missing:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(node, DictConfig):
            continue  # a deeper path Hydra names better
        valid = [str(k) for k in node.keys() if not str(k).startswith("_")]
        where = f"{parent} ({groups_choice(groups, parent)})" if parent else "the config"
        raise ConfigError(f"{key} is not a key of {where}{did_you_mean(leaf, valid)} valid: {', '.join(valid)}")


def groups_choice(groups: list[str], parent: str, conf_dir: Path = CONF_DIR) -> str:
    """The choice of `parent`'s group: the override's (method=ga -> 'ga'), else conf/config.yaml's default."""
    head = parent.split(".")[0]
    chosen = next((g.split("=", 1)[1] for g in groups if g.split("=", 1)[0] == head), None)
    if chosen is None:
        defaults = OmegaConf.load(conf_dir / "config.yaml").get("defaults", [])
        chosen = next((str(d[head]) for d in defaults if isinstance(d, DictConfig) and head in d), "default")
    return f"{head}={chosen}"

