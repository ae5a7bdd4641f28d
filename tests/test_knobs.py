"""Every knob of every yaml is range-checked up front (unlearn/knobs.py): a walk over conf/ finds each node
with a `_target_`, checks that each of its numeric knobs is declared, and that a value just outside the
declared range is refused by the check `Experiment` runs before anything is built or trained."""
from __future__ import annotations


import pytest
from omegaconf import DictConfig, OmegaConf

from conftest import TINY
from unlearn.config import CONF_DIR, check_node, compose_config, target_of
from unlearn.errors import ConfigError
from unlearn.knobs import OneOf, Range, declared_knobs
from unlearn.pipeline import Experiment

# Groups whose choices are nodes built by Hydra (the `data` group is global: its nodes sit under data.*).
GROUPS = ["method", "forget", "prune", "attribution", "model", "data", "logger", "attack", "scenario"]


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(group: str, choice: str):
    """The config with this choice, beside a data set it fits (a model may read data.* interpolations), with
    stand-ins for mandatory paths (data=imagefolder needs data.root and data.num_classes, data=tofu model.name)."""
    stand_ins = ["++data.root=/nonexistent", "++data.num_classes=10", "++model.name=/nonexistent"]
    for data in [None, *_choices("data")]:
        for extra in ([], stand_ins):
            cfg = compose_config(f"{group}={choice}", *([f"data={data}"] if data and group != "data" else []), *extra)
            try:
                node = cfg.get(group)
                if node is not None:
                    OmegaConf.to_container(node, resolve=True)
                return cfg
            except Exception:  # an interpolation this data set does not provide
                continue
    raise AssertionError(f"{group}={choice} composes with no data set")


def _targets(node, path: str):
    """(dotted path, node) of every nested node with a `_target_`."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                yield from _targets(child, f"{path}.{key}" if path else str(key))


def _cases():
    for group in GROUPS:
        for choice in _choices(group):
            root = "data" if group == "data" else group
            cfg = _compose(group, choice)
            for path, node in _targets(cfg.get(root), root):
                target = target_of(node)
                knobs = declared_knobs(target)
                values = OmegaConf.to_container(node, resolve=True)
                for key, value in values.items():
                    if key.startswith("_"):
                        continue
                    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                    if numeric or key in knobs:
                        yield pytest.param(group, choice, path, key, knobs.get(key), numeric, cfg,
                                           id=f"{group}={choice}:{path}.{key}")


CASES = list(_cases())


@pytest.mark.parametrize("group,choice,path,key,knob,numeric,cfg", CASES)
def test_every_knob_is_declared_and_refused_outside_its_range(group, choice, path, key, knob, numeric, cfg):
    assert knob is not None, f"{path}.{key} ({group}={choice}) is numeric but declares no range in `knobs`"
    bad = knob.outside()
    cfg = cfg.copy()
    OmegaConf.update(cfg, f"{path}.{key}", bad, force_add=True)
    with pytest.raises(ConfigError, match=rf"{path}\.{key}=.* must be"):
        check_node(OmegaConf.select(cfg, path))  # what Experiment runs on the whole config, on this node


def test_the_walk_covers_the_groups():
    groups = {c.values[0] for c in CASES}
    assert {"method", "forget", "prune", "attribution", "model", "data"} <= groups
    assert len(CASES) > 60


def test_a_salun_mask_ratio_out_of_range_fails_before_anything_is_built(tmp_path):
    for bad in ("1.5", "0", "-0.2"):
        cfg = compose_config(*TINY, "method=salun", f"method.mask_ratio={bad}", f"cache_dir={tmp_path / 'cache'}",
                             f"results_dir={tmp_path / 'out'}")
        with pytest.raises(ConfigError, match=r"method\.mask_ratio=.* must be a number in \(0, 1\]"):
            Experiment(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_training_recipe_is_checked_up_front():
    with pytest.raises(ConfigError, match=r"data\.train\.lr=-1\.0 is out of range"):
        Experiment(compose_config(*TINY, "data.train.lr=-1.0"))


def test_ranges_describe_themselves_and_refuse_what_they_should():
    r = Range(0, 1, low_open=True)
    assert r.describe() == "a number in (0, 1]" and not r.accepts(0) and r.accepts(1) and not r.accepts(float("nan"))
    assert r.outside() == 0
    count = Range(1, integer=True, optional=True)
    assert count.accepts(None) and count.accepts(3) and not count.accepts(2.5) and not count.accepts(True)
    assert OneOf(["sgd", "adam"]).describe() == "one of sgd, adam" and not OneOf(["sgd"]).accepts("adamw")
