"""Checkpoint selection on a validation request (method.select=best_val, docs/tuning.md): the validation request is
drawn like the reported one and shares none of its examples, its oracle is cached under its own identity, the
reported run ends at the chosen checkpoint, and selecting on the reported request or the test split is refused."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from unlearn.config import compose_config
from unlearn.data.forget import ClassForget, RandomForget
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment

from conftest import ROOT, TINY


def _data(n=100, classes=10, groups=None) -> DataBundle:
    y = torch.arange(n) % classes
    train = TensorData(x=torch.zeros(n, 1), y=y, **({"group": torch.arange(n) // groups} if groups else {}))
    test = TensorData(x=torch.zeros(20, 1), y=torch.arange(20) % classes)
    return DataBundle(name="toy", train=train, val=TensorData(x=torch.zeros(0, 1), y=torch.zeros(0, dtype=torch.long)),
                      test=test, info={"num_classes": classes})


def test_a_random_validation_request_is_as_large_and_disjoint():
    data, builder = _data(), RandomForget(ratio=0.2)
    reported = builder.build(data, seed=1)
    validation = builder.validation(data, reported, seed=2)
    assert len(validation.indices) == len(reported.indices) == 20
    assert not set(validation.indices) & set(reported.indices) and validation.description["validation"]
    grouped = _data(groups=5)  # 20 groups of 5: whole groups, none of the reported ones
    reported = builder.build(grouped, seed=1)
    validation = builder.validation(grouped, reported, seed=2)
    assert not set(validation.description["groups"]) & set(reported.description["groups"])
    assert not set(validation.indices) & set(reported.indices) and len(validation.indices) == 20
    with pytest.raises(ConfigError, match="validation request of 60 training examples"):
        RandomForget(ratio=0.6).check_validation(data)


def test_a_class_validation_request_forgets_other_classes_and_too_few_are_refused():
    data = _data()
    builder = ClassForget(classes=[3, 4])
    validation = builder.validation(data, builder.build(data, 0), seed=5)
    assert len(validation.description["classes"]) == 2 and not {3, 4} & set(validation.description["classes"])
    assert not np.isin(data.test["y"].numpy()[validation.test_indices], validation.description["classes"]).any()
    with pytest.raises(ConfigError, match="only 4 other class"):
        ClassForget(classes=[0, 1, 2, 3, 4, 5]).check_validation(data)


def _experiment(cache, tmp_path, *overrides):
    cfg = compose_config(*TINY, f"cache_dir={cache}", f"results_dir={tmp_path}",
                         f"table_path={tmp_path / 'table.jsonl'}", "method=ga", "method.epochs=4", *overrides)
    return Experiment(cfg)


def test_best_val_chooses_on_the_validation_request_and_the_reported_run_stops_there(shared_cache, tmp_path):
    x = _experiment(shared_cache, tmp_path, "method.eval_every=1", "method.select=best_val")
    row = x.run(run_dir=tmp_path / "run")
    chosen = row["selection"]
    validation = chosen["validation"]
    assert chosen["rule"] == "best_val" and chosen["unit"] == "epoch" and 0 <= chosen["position"] <= 4
    # Chosen on the validation run's own trajectory: the smallest Avg. Gap there.
    assert chosen["score"] == pytest.approx(min(validation["trajectory"]["avg_gap"]))
    assert row["trajectory"]["epoch"][-1] == chosen["position"]  # the reported run ended at the chosen epoch
    reported = set(x.request.forget.indices.tolist())
    drawn, _, _ = x.request.validation_set()
    assert not reported & set(drawn.indices.tolist()) and len(drawn.indices) == len(reported)
    assert validation["oracle"] != row["reference"]["oracle"] and validation["oracle"].startswith("oracle-")
    # The validation oracle is cached like any oracle: a second run reuses it.
    again = _experiment(shared_cache, tmp_path, "method.eval_every=1", "method.select=best_val").run(run_dir=tmp_path / "r2")
    assert again["selection"]["validation"]["oracle_cached"] and again["selection"]["position"] == chosen["position"]


@pytest.mark.parametrize("overrides,message", [
    (["method.eval_every=1", "method.select=best_test"], "refused: it would choose the checkpoint on the test split"),
    (["method.eval_every=1", "method.select=best_forget"], "the reported forget set"),
    (["method.select=best_val"], "give method.eval_every"),
    (["method.eval_every=1", "method.select=best_val", "forget=worst_case"], "cannot draw a validation request"),
])
def test_selecting_on_what_the_row_reports_is_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        _experiment(tmp_path / "cache", tmp_path, *overrides)
    assert "\n" not in str(err.value)


def test_a_validation_request_that_cannot_be_drawn_is_refused_before_training(tmp_path):
    x = _experiment(tmp_path / "cache", tmp_path, "method.eval_every=1", "method.select=best_val", "forget=class",
                    "forget.classes=[0,1,2,3,4,5]")
    with pytest.raises(ConfigError, match="only 4 other class"):
        x.run(run_dir=tmp_path / "run")
    assert not list((tmp_path / "cache").rglob("original-*"))  # nothing trained


def test_the_command_line_refusal_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "method=ga", "method.eval_every=1",
                           "method.select=best_test", f"results_dir={tmp_path}"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "method.select=best_test is refused" in done.stderr


def test_a_stream_refuses_trajectories_and_selection(tmp_path):
    from unlearn.config import build

    x = _experiment(tmp_path / "cache", tmp_path, "method.eval_every=1", "method.select=best_val", "scenario=sequence")
    with pytest.raises(ConfigError, match="scenario=sequence records no trajectory"):
        build(x.cfg.scenario).run(x)
