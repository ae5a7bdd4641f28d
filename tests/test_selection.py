"""Checkpoint selection on a validation request (method.select=best_val, docs/tuning.md): the validation request is
drawn like the reported one and shares none of its examples, its oracle is cached under its own identity, the
reported run ends at the chosen checkpoint, and selecting on the reported request or the test split is refused."""
from __future__ import annotations

import json
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


def test_a_builder_that_cannot_draw_a_request_like_its_own_refuses_in_one_line(tmp_path):
    from unlearn.data.from_file import FromFileForget

    path = tmp_path / "forget.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match="forget=from_file cannot draw a validation request") as err:
        FromFileForget(str(path)).check_validation(_data())
    assert "\n" not in str(err.value)


STREAM = ["scenario=sequence", "scenario.steps=2", "method.epochs=3", "method.eval_every=1"]


def test_a_stream_selects_each_step_on_the_request_before_it(shared_cache, tmp_path):
    """Step 1 chooses on F0 (a request drawn after the stream's, never reported), step k on F_{k-1} from the model
    that entered step k-1: its validation run is step k-1's run again, so its trajectory starts as step k-1's did.
    The stream's own requests are those of the same stream without selection."""
    from unlearn.config import build

    x = _experiment(shared_cache, tmp_path, *STREAM, "method.select=best_val")
    scenario = build(x.cfg.scenario)
    last = scenario.run(x, run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "table.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and last["step"] == 2
    first, second = rows[0]["selection"], rows[1]["selection"]
    assert first["validation"]["forget"]["step"] == 0 and first["validation"]["forget"]["validation"]
    assert second["validation"]["forget"]["step"] == 1
    f0 = set(scenario.validation.indices.tolist())
    stream = [set(r.indices.tolist()) for r in scenario._requests]
    assert len(f0) == len(stream[0]) and not f0 & (stream[0] | stream[1])
    for row, chosen in zip(rows, (first, second)):  # each reported run ends at its chosen epoch
        assert row["trajectory"]["epoch"][-1] == chosen["position"]
        assert chosen["score"] == pytest.approx(min(chosen["validation"]["trajectory"]["avg_gap"]))
    reported_1, again_1 = rows[0]["trajectory"]["avg_gap"], second["validation"]["trajectory"]["avg_gap"]
    assert again_1[:len(reported_1)] == pytest.approx(reported_1)
    assert second["validation"]["oracle_cached"]  # step 1's oracle, trained once
    plain = _experiment(shared_cache, tmp_path / "plain", *STREAM)
    assert [r.indices.tolist() for r in build(plain.cfg.scenario).requests(plain)] == [sorted(s) for s in stream]
    # Warm: every model and request now comes from the cache, and the rows are the cold run's.
    warm = _experiment(shared_cache, tmp_path / "warm", *STREAM, "method.select=best_val")
    build(warm.cfg.scenario).run(warm, run_dir=tmp_path / "warm" / "run")
    again = [json.loads(line) for line in (tmp_path / "warm" / "table.jsonl").read_text().splitlines()]
    strip = lambda m: {k: v for k, v in m.items() if "RTE" not in k and not k.endswith("_s")}  # noqa: E731
    assert [strip(r["metrics"]) for r in again] == [strip(r["metrics"]) for r in rows]
    assert [r["selection"]["position"] for r in again] == [first["position"], second["position"]]
    assert all(r["selection"]["validation"]["oracle_cached"] for r in again)


@pytest.mark.parametrize("overrides,message", [
    (["tuning.trial=true"], "tuning trials run on scenario=single"),
    (["scenario.oracle=false"], "which scenario.oracle=false skips"),
    (["method.select=best_val", "scenario.kind=classes", "scenario.classes_per_step=4"],
     r"\(2 \+ 1 for method.select=best_val's validation request\) × classes_per_step=4 = 12"),
])
def test_a_stream_refuses_what_it_cannot_select_on_in_one_line(tmp_path, overrides, message):
    from unlearn.config import build

    x = _experiment(tmp_path / "cache", tmp_path, *STREAM, *overrides)
    with pytest.raises(ConfigError, match=message) as err:
        build(x.cfg.scenario).run(x)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache").rglob("original-*"))  # nothing trained


def test_a_worst_case_request_selects_on_the_worst_case_among_what_it_leaves(shared_cache, tmp_path):
    x = _experiment(shared_cache, tmp_path, "forget=worst_case", "forget.upper_epochs=3", "forget.lower_epochs=1",
                    "forget.batch_size=128", "method.epochs=2", "method.eval_every=1", "method.select=best_val")
    row = x.run(run_dir=tmp_path / "run")
    drawn = row["selection"]["validation"]["forget"]
    assert drawn["builder"] == "worst_case" and drawn["validation"] and drawn["size"] == len(x.request.forget.indices)
    art = x.prepare(with_oracle=False)
    validation, _, cached = x.request.validation_set(art.original, art.original_key)
    assert cached and not set(validation.indices.tolist()) & set(x.request.forget.indices.tolist())


def test_a_concept_request_selects_on_another_concept_of_its_axis(shared_cache, tmp_path):
    """The validation run erases another background than the request's (the task reads that concept meanwhile) against
    the world without it; then the task is back on the run's own concept for the reported run."""
    from test_t2i import TINY_WORLD

    cfg = compose_config(*TINY_WORLD, f"cache_dir={shared_cache}", f"results_dir={tmp_path}",
                         f"table_path={tmp_path / 'table.jsonl'}", "method=rl", "method.epochs=1",
                         "method.eval_every=1", "method.select=best_val")
    x = Experiment(cfg)
    erasing, unlearn = [], x.stage.unlearn

    def watched(*args, **kwargs):  # the concept the task reads while the method runs
        erasing.append(x.task.request.concept)
        return unlearn(*args, **kwargs)

    x.stage.unlearn = watched
    row = x.run(run_dir=tmp_path / "run")
    validation = row["selection"]["validation"]
    assert validation["forget"]["concept"] in ("black", "gray") and validation["forget"]["axis"] == "background"
    assert erasing == [validation["forget"]["concept"], "white"] and row["forget"]["concept"] == "white"
    assert validation["oracle"].startswith("oracle-") and row["trajectory"]["epoch"][-1] == row["selection"]["position"]


def test_best_val_is_refused_where_the_task_measures_no_gap_to_an_oracle():
    from unlearn.protocol import Protocol

    protocol = Protocol.of({"eval_every": 1, "select": "best_val"})
    with pytest.raises(ConfigError, match="has none to measure a gap to"):
        protocol.check("npo", True, (), 10)  # known_facts: no oracle, no gap metrics
    protocol.check("npo", True, ("forget_prob",), 10)


@pytest.mark.parametrize("kind", ["classes", "concepts"])
def test_a_stream_draws_its_validation_request_after_its_own_and_apart_from_them(shared_cache, tmp_path, kind):
    from unlearn.config import build
    from test_t2i import TINY_WORLD

    base = [*TINY_WORLD, "method=rl"] if kind == "concepts" else [*TINY, "method=ga"]

    def stream(*extra):
        x = Experiment(compose_config(*base, f"cache_dir={shared_cache}", f"results_dir={tmp_path}", "scenario=sequence",
                                      f"scenario.kind={kind}", "scenario.steps=2", "method.eval_every=1", *extra))
        scenario = build(x.cfg.scenario)
        return scenario, scenario.requests(x)

    selecting, requests = stream("method.select=best_val")
    _, plain = stream()
    assert [r.indices.tolist() for r in requests] == [r.indices.tolist() for r in plain]
    f0 = selecting.validation
    # apart from F1, the request step 1 reports (a concept stream's requests of other axes share images anyway)
    apart = requests[:1] if kind == "concepts" else requests
    assert f0.description["step"] == 0 and not set(f0.indices.tolist()) & {i for r in apart for i in r.indices.tolist()}
    named = "classes" if kind == "classes" else "concept"
    assert f0.description[named] not in [r.description[named] for r in requests]
    if kind == "concepts":
        assert f0.description["axis"] == requests[0].description["axis"]
