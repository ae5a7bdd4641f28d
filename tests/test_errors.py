"""Every mistake a newcomer makes gets one line before anything trains, with the closest valid name, exit 2 and no
run folder: misspelt keys (with and without Hydra's `+`), misspelt choices, a benchmark without the published model
it unlearns, and a hub that cannot be reached (no minute of retries)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from unlearn.config import check_choices, compose_config
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment


def run_cli(tmp_path, *args):
    env = {**os.environ, "UNLEARN_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"results_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("args, message", [
    (["method.lrr=0.1"], "error: method.lrr is not a key of method (method=salun); did you mean lr?"),
    (["+method.lrr=0.1", "threads=1"], "error: method.lrr is not a setting of method (SalUn); did you mean lr?"),
    (["method=salunn"], "error: method=salunn is not a method config; did you mean salun?"),
])
def test_a_misspelt_name_is_one_line_with_the_closest_valid_one(tmp_path, args, message):
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_keys_are_checked_against_the_chosen_group_and_on_a_sweeps_first_value():
    check_choices(["method=ga", "method.lr=0.1", "data.train.epochs=2", "seed=0"])  # valid: nothing raised
    check_choices(["-m", "method=ga,salun", "method.mask_ratio=0.3,0.5", "seed=0,1"])
    with pytest.raises(ConfigError, match=r"data.train.epoch is not a key of data.train \(data=digits\); did you mean "
                                          r"epochs\?"):
        check_choices(["data.train.epoch=3"])
    with pytest.raises(ConfigError, match="seeed is not a key of the config; did you mean seed?"):
        check_choices(["seeed=1"])
    with pytest.raises(ConfigError, match=r"method.layer is not a key of method \(method=ga\)"):
        check_choices(["-m", "method=ga,rmu", "method.layer=3"])


def test_a_benchmark_without_its_published_model_names_original_path():
    with pytest.raises(ConfigError, match=r"model.name is null, and model needs it; it follows original.path: give "
                                          r"original.path="):
        Experiment(compose_config("data=tofu", "method=npo", "threads=1", "device=cpu"))


def test_an_unreachable_hub_is_named_at_once(monkeypatch):
    import unlearn.hub
    from unlearn.models import checkpoints

    unlearn.hub._connect.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    try:
        start = time.perf_counter()
        assert "127.0.0.1:9 cannot be reached" in unlearn.hub.why_unreachable()
        with pytest.raises(ConfigError, match=r"original.path='owner/model' .*\(the hub cannot be used from here: "
                                              r"127.0.0.1:9 cannot be reached"):
            checkpoints.resolve("original", "owner/model")
        assert time.perf_counter() - start < 30  # not huggingface_hub's minute of retries
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert unlearn.hub.why_unreachable() == "HF_HUB_OFFLINE is set"
    finally:
        unlearn.hub._connect.cache_clear()


def test_the_suite_never_writes_into_the_users_cache(shared_cache):
    from unlearn.cache import default_cache_dir

    assert default_cache_dir() == Path(os.environ.get("UNLEARN_TEST_CACHE") or shared_cache)


def test_a_population_of_two_is_refused_before_training():
    with pytest.raises(ConfigError, match="eval.oracles=2 is too few for a population"):
        Experiment(compose_config(*TINY, "eval.oracles=2"))
