"""A population's members built as jobs of a Hydra multirun (`stage=members member=i`, unlearn/pipeline/jobs.py) by
the launchers users have without a cluster (submitit's local executor, joblib's processes): the population run then
finds every member cached and gives the metrics of the single-process run, and two jobs racing for one member
train it once."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from unlearn.config import compose_config
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.pipeline.jobs import Stage, build_member, members_command, missing_members, require_members

# The cheapest population: tiny digits, a short recipe, two epochs of gradient ascent.
BASE = [*TINY, "data.train.epochs=4", "method=ga", "method.epochs=2", "save_model=false"]
POPULATION = ("klom_", "lira_", "rmia", "eps_")


def experiment(cache: Path, tmp_path: Path, *overrides: str) -> Experiment:
    return Experiment(compose_config(*BASE, f"cache_dir={cache}", f"results_dir={tmp_path / 'in-process'}", *overrides))


def population_metrics(row: dict) -> dict[str, float]:
    return {k: v for k, v in row["metrics"].items() if k.startswith(POPULATION)}


def multirun(tmp_path: Path, cache: Path, *overrides: str) -> Path:
    """`python run.py -m ...` (a fresh interpreter per launcher job); returns the sweep folder."""
    env = {k: v for k, v in os.environ.items() if k != "UNLEARN_CACHE"}
    done = subprocess.run([sys.executable, "run.py", "-m", *BASE, f"cache_dir={cache}",
                           f"results_dir={tmp_path / 'out'}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "out" / "default" / "sweeps").iterdir()
    return sweep


def computed(sweep: Path) -> list[str]:
    """The keys the sweep's jobs computed ("<what>: not cached, computing <key>" in each job's log)."""
    return [key for log in sweep.glob("*/run.log")
            for key in re.findall(r"not cached, computing (\S+)", log.read_text())]


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y))
                                        for x, y in zip(a.values(), b.values()))


def test_member_jobs_on_submitit_give_the_single_process_population(tmp_path):
    single = experiment(tmp_path / "one-process", tmp_path, "eval.oracles=3").run()
    # Four jobs for three members: member 1 twice, the jobs racing for it.
    sweep = multirun(tmp_path, tmp_path / "shared", "eval.oracles=3", "stage=members", "member=0,1,2,1",
                     "hydra/launcher=submitit_local")
    keys = computed(sweep)
    assert len(keys) == len(set(keys)), f"computed twice: {sorted(k for k in keys if keys.count(k) > 1)}"
    assert sum(k.startswith("original-") for k in keys) == 3
    assert sum(k.startswith("population-member-") for k in keys) == 3
    assert sorted(p.parent.name[0] for p in sweep.glob("*/member.json")) == ["0", "1", "2", "3"]
    assert not (tmp_path / "out" / "default" / "table.jsonl").exists()  # member jobs write no row

    x = experiment(tmp_path / "shared", tmp_path, "eval.oracles=3", "stage=metrics")
    require_members(x, [])  # every member cached: nothing refused
    row = x.run()
    assert same(population_metrics(row), population_metrics(single)) and len(population_metrics(row)) > 10
    assert row["metrics"]["klom_forget"] == single["metrics"]["klom_forget"]  # a number, not NaN == NaN


def test_jobs_racing_for_one_member_on_joblib_train_it_once(tmp_path):
    sweep = multirun(tmp_path, tmp_path / "shared", "eval.oracles=3", "stage=members", "member=1,1",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    keys = computed(sweep)
    assert sorted(k.split("-")[0] for k in keys) == ["forget", "oracle", "original", "population"]
    x = experiment(tmp_path / "shared", tmp_path, "eval.oracles=3")
    assert missing_members(x) == [0, 2]  # member 1 is whole; nothing of the others was built
    with pytest.raises(ConfigError, match=r"member\(s\) 0, 2 of eval.oracles=3 are not in .*python run.py -m "
                                          r"stage=members member=0,2 eval.oracles=3$"):
        require_members(x, ["eval.oracles=3", "stage=metrics"])


def test_a_warm_population_computes_no_member_and_a_missing_one_is_named(tmp_path, caplog):
    cache = tmp_path / "cache"
    for index in (0, 2):
        build_member(experiment(cache, tmp_path, "eval.oracles=3"), index)
    x = experiment(cache, tmp_path, "eval.oracles=3")
    assert missing_members(x) == [1]
    assert members_command([1, 2, 3, 5], ["a=1", "stage=metrics", "+member=2"]) == \
        "python run.py -m stage=members member=1,2,3,5 a=1"
    assert members_command([0, 1, 2], []) == "python run.py -m stage=members 'member=range(0,3)'"
    build_member(x, 1)
    assert missing_members(experiment(cache, tmp_path, "eval.oracles=3")) == []
    caplog.set_level("INFO", logger="unlearn.cache")
    experiment(cache, tmp_path, "eval.oracles=3").run()
    assert not re.search(r"(original|oracle \(retrain\)|population member \d): not cached", caplog.text)
    assert caplog.text.count("population member") >= 3


@pytest.mark.parametrize("overrides,message", [
    (["stage=members", "member=3"], r"member=3 is outside the population of eval.oracles=3; valid: 0..2"),
    (["stage=members", "member=-1"], r"member=-1 is outside"),
    (["stage=members"], r"stage=members needs member=<index> in 0..2"),
    (["member=1"], r"member=1 builds one population member and needs stage=members"),
    (["stage=sometimes"], r"stage='sometimes' is not a stage; valid: all, members, metrics"),
    (["stage=members", "member=one"], r"member='one' must be a member index"),
])
def test_bad_stage_or_member_is_one_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Stage.of(compose_config(*BASE, "eval.oracles=3", *overrides))


@pytest.mark.parametrize("overrides,message", [
    (["scenario=sequence", "stage=members", "member=0"], r"stage=members builds the population of one request"),
    (["use_cache=false", "stage=metrics"], r"stage=metrics works through the cache"),
    (["eval.stacked=true", "stage=members", "member=1"], r"add eval.stacked=false to the member jobs"),
])
def test_a_stage_the_experiment_cannot_run_is_refused_before_training(tmp_path, overrides, message):
    x = experiment(tmp_path / "cache", tmp_path, "eval.oracles=3", *overrides)
    with pytest.raises(ConfigError, match=message):
        Stage.of(x.cfg).check(x)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("original-*"))


def test_the_cli_refuses_a_member_outside_the_population_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "run.py", *BASE, "eval.oracles=3", "stage=members", "member=3",
                           f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'out'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: member=3 is outside the population of eval.oracles=3; valid: 0..2"
    assert not (tmp_path / "out").exists(), "no run folder, nor the empty folders above it"
