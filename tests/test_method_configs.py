"""Method configs said once: the knobs the trained methods share live in conf/method_defaults/ (optimizer.yaml;
gradient.yaml = optimizer + schedule + stream; mask.yaml), and each conf/method yaml lists only its `_target_`, its
own knobs and the values it changes. The resolved config of every method (alone and with the conf/tuned overlays of
data=facts, digits_gen, shapes_t2i) must equal the snapshot tests/method_configs.json recorded before that
refactor, so no number moves.

`UNLEARN_RECORD_METHOD_CONFIGS=1 pytest tests/test_method_configs.py` rewrites the snapshot from the current configs
(only for a change meant to change a method's defaults; say which in the commit)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unlearn.config import CONF_DIR, check_choices, compose_config, plain
from unlearn.errors import ConfigError

SNAPSHOT = Path(__file__).with_name("method_configs.json")
RECORD = os.environ.get("UNLEARN_RECORD_METHOD_CONFIGS") == "1"
ROOT = Path(__file__).resolve().parents[1]

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
DATA = ["default", "facts", "digits_gen", "shapes_t2i", "mnist_gen", "news", "known_facts"]   # all but default have conf/tuned/<data>/<method> overlays
SHARED = CONF_DIR / "method_defaults"   # optimizer.yaml < gradient.yaml, and mask.yaml: pulled in with @_here_


def resolved(data: str, method: str):
    """plain(cfg.method) of `method=<method> [data=<data>]`, or the error that composing/resolving it raises."""
    try:
        cfg = compose_config(f"method={method}", *([] if data == "default" else [f"data={data}"]))
        return plain(cfg.method)
    except Exception as exc:  # a method that does not apply to this data set: the snapshot records that too
        return {"error": type(exc).__name__}


def current() -> dict:
    return {data: {method: resolved(data, method) for method in METHODS} for data in DATA}


@pytest.fixture(scope="module")
def snapshot() -> dict:
    if RECORD:
        SNAPSHOT.write_text(json.dumps(current(), indent=1) + "\n")
    return json.loads(SNAPSHOT.read_text())


def test_snapshot_covers_every_method_and_the_tuned_overlays(snapshot):
    assert sorted(snapshot) == sorted(DATA)
    for data in DATA:
        assert sorted(snapshot[data]) == METHODS, f"{data}: methods added or removed; rerecord the snapshot"
    tuned = {(p.parent.name, p.stem) for p in (CONF_DIR / "tuned").glob("*/*.yaml")}
    assert tuned and all(data in DATA and method in METHODS for data, method in tuned)


@pytest.mark.parametrize("data", DATA)
def test_every_method_resolves_as_recorded(snapshot, data):
    for method in METHODS:
        now = resolved(data, method)
        assert now == snapshot[data][method], f"data={data} method={method}: {now} != {snapshot[data][method]}"


def test_shared_defaults_are_not_a_method_choice():
    shared = sorted(p.stem for p in SHARED.glob("*.yaml"))
    assert shared == ["gradient", "mask", "optimizer", "protocol"] and not set(shared) & set(METHODS)
    for name in shared:
        with pytest.raises(ConfigError, match=f"method={name} is not a method config"):
            check_choices([f"method={name}"])


def load(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def shared_values(name: str) -> dict:
    """The values conf/method_defaults/<name>.yaml gives, its own defaults list (other files of the group) first."""
    own = load(SHARED / f"{name}.yaml")
    values: dict = {}
    for entry in own.pop("defaults", []):
        if entry != "_self_":
            values |= shared_values(entry)
    return values | own


def test_no_method_yaml_repeats_a_shared_default():
    users = 0
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        own = load(path)
        inherited: dict = {}
        for entry in own.pop("defaults", []):
            if isinstance(entry, str) and entry.startswith("/method_defaults/"):
                inherited |= shared_values(entry.removeprefix("/method_defaults/").removesuffix("@_here_"))
        users += bool(inherited)
        repeated = {k: v for k, v in own.items() if k in inherited and v == inherited[k]}
        assert not repeated, f"{path.name} repeats the shared defaults {repeated}"
    assert users >= 20


def test_cli_overrides_still_apply():
    cfg = compose_config("method=ga", "method.lr=0.1", "method.mask=wagle")
    assert cfg.method.lr == 0.1 and cfg.method.mask == "wagle" and cfg.method.epochs == 10
    cfg = compose_config("method=salun", "method.mask_ratio=0.3", "data=facts")
    assert cfg.method.mask_ratio == 0.3 and cfg.method.mask == "saliency" and cfg.method.optimizer == "adamw"
    with pytest.raises(Exception):  # a key the method does not take is still refused (struct mode)
        compose_config("method=uce", "method.lr=0.1")


def test_cli_sweep_runs_each_method(tmp_path):
    tiny = ["data.source.limit=300", "data.train.epochs=1", "data.train.batch_size=32", "device=cpu", "threads=1"]
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "method=ft,ga,salun", "method.epochs=1", *tiny,
                             f"results_dir={tmp_path / 'out'}", "save_model=false"], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "UNLEARN_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(r) for r in (tmp_path / "out" / "default" / "table.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["ft", "ga", "salun"]
