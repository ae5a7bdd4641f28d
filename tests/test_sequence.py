"""scenario=sequence: one row per request, per-step oracles cached by the retained set and shared by methods."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from unlearn.config import build, compose_config
from unlearn.errors import ConfigError
from unlearn.eval.continual import class_group_accuracy, h_mean
from unlearn.pipeline import Experiment
from unlearn.report import plots
from unlearn.report.compare import steps_table, stream_tables

from conftest import TINY


@pytest.fixture
def run_sequence(tmp_path, shared_cache):
    def _run(*overrides: str) -> list[dict]:
        table = tmp_path / "table.jsonl"
        cfg = compose_config(*TINY, f"cache_dir={shared_cache}", "scenario=sequence", f"table_path={table}", *overrides)
        table.unlink(missing_ok=True)
        build(cfg.scenario).run(Experiment(cfg), run_dir=tmp_path / "run")
        from unlearn.report.compare import load_rows
        return load_rows(table)

    return _run


def test_id_stream_rows_and_oracles_shared_across_methods(run_sequence, tmp_path):
    ft = run_sequence("method=ft", "method.epochs=2", "scenario.steps=2")
    ga = run_sequence("method=ga", "method.epochs=2", "scenario.steps=2")
    assert [r["step"] for r in ft] == [1, 2] and [r["step"] for r in ga] == [1, 2]
    # The second method finds every step's oracle in the cache (trained without F1 ∪ … ∪ Fk by the first).
    assert all(r["timings"]["oracle_cached"] for r in ga)
    assert [r["reference"]["oracle"]["UA"] for r in ga] == [r["reference"]["oracle"]["UA"] for r in ft]
    # Step k's retain set shrinks by the request; the requests are disjoint and the same for both methods.
    assert ft[1]["forget"]["size"] == 2 * ft[0]["request"]["size"] == ga[1]["forget"]["size"]
    assert math.isnan(ga[0]["metrics"]["earlier_UA"]) and math.isfinite(ga[1]["metrics"]["earlier_UA"])
    assert ga[1]["metrics"]["cum_RTE_s"] > ga[0]["metrics"]["cum_RTE_s"] > 0
    assert ga[1]["reference"]["oracle"]["cum_RTE_s"] > ga[0]["reference"]["oracle"]["cum_RTE_s"]
    text = steps_table(ft + ga)
    assert re.search(r"\| retrain\s+\| 2\s+\|", text) and re.search(r"\| ga\s+\| 2\s+\|", text)
    assert "| cum_RTE_s" in text and "| earlier_UA" in text and "| Avg.Gap" in text  # against each step's oracle
    plots.steps(stream_tables(ft + ga), tmp_path / "steps.png")
    assert (tmp_path / "steps.png").stat().st_size > 0


def test_class_stream_continual_metrics(run_sequence):
    rows = run_sequence("method=ga", "method.epochs=3", "scenario.kind=classes", "scenario.steps=2",
                        "scenario.classes_per_step=2")
    first, second = rows
    assert len(first["request"]["classes"]) == 2 and set(first["request"]["classes"]).isdisjoint(second["request"]["classes"])
    oracle = second["reference"]["oracle"]
    # The oracle never saw the forgotten classes: it cannot predict them on test.
    assert oracle["acc_f"] == 0 and oracle["acc_old"] == 0 and oracle["acc_r"] > 80
    for r in rows:
        m = r["metrics"]
        assert m["h_mean"] == pytest.approx(h_mean(m["drop_f"], m["acc_r"]))
        assert m["drop_f"] > 10  # gradient ascent on the request's classes lowers their accuracy
        assert m["acc_f"] < r["reference"]["original"]["acc_f"]


@pytest.mark.parametrize("overrides, message", [
    (["scenario.steps=0"], "scenario.steps"),
    (["scenario.kind=classes", "scenario.steps=5", "scenario.classes_per_step=2"], "at least one must remain"),
    (["forget.ratio=0.3", "scenario.steps=4"], "empty the training set"),
    (["forget=class", "scenario.kind=ids"], "forget=random"),
])
def test_impossible_streams_refused_before_training(overrides, message, tmp_path):
    cfg = compose_config(*TINY, f"cache_dir={tmp_path}", "scenario=sequence", "method=ft", *overrides)
    with pytest.raises(ConfigError, match=message):
        scenario = build(cfg.scenario)
        experiment = Experiment(cfg)
        scenario.requests(experiment)
    assert not list(tmp_path.glob("original-*"))


def test_h_mean_and_group_accuracy_known_values():
    assert h_mean(90.0, 90.0) == pytest.approx(90.0)
    assert h_mean(60.0, 90.0) == pytest.approx(2 * 60 * 90 / 150)
    assert h_mean(-5.0, 90.0) == 0.0 and math.isnan(h_mean(float("nan"), 1.0))
    preds, labels = np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])
    assert class_group_accuracy(preds, labels, [1]) == 50.0
    assert class_group_accuracy(preds, labels, [0, 2]) == 100.0
    assert math.isnan(class_group_accuracy(preds, labels, [7]))


def test_streams_vary_apart_from_the_model_and_oracle_can_be_skipped(run_sequence, tmp_path):
    """scenario.stream_seed draws another stream against the same original; scenario.oracle=false trains no
    per-step retrain (no oracle columns, no retrain rows) and refuses method=retrain, which is the oracle."""
    a = run_sequence("method=ft", "method.epochs=1", "scenario.steps=2", "scenario.stream_seed=1", "scenario.oracle=false")
    b = run_sequence("method=ft", "method.epochs=1", "scenario.steps=2", "scenario.stream_seed=2", "scenario.oracle=false")
    assert [r["stream_seed"] for r in a] == [1, 1] and a[0]["seed"] == b[0]["seed"]
    streams = []
    for stream_seed in (1, 2):
        cfg = compose_config(*TINY, f"cache_dir={tmp_path}", "scenario=sequence", "scenario.steps=2",
                             f"scenario.stream_seed={stream_seed}")
        streams.append(np.concatenate([r.indices for r in build(cfg.scenario).requests(Experiment(cfg))]))
    assert not np.array_equal(*streams)
    assert a[0]["reference"]["original"]["TA"] == b[0]["reference"]["original"]["TA"]  # the same original
    assert all(r["reference"]["oracle"] == {} and not r["timings"]["oracle_cached"] for r in a + b)
    assert all(math.isfinite(r["metrics"]["UA"]) and "kl_forget" not in r["metrics"] for r in a)
    text = steps_table(a + b)
    assert "| retrain" not in text and re.search(r"\| ft\s+\| 2\s+\| 2 ", text)  # two streams per step
    assert "| TA " in text and "| Avg.Gap" not in text  # the task's metrics still shown without an oracle to gap them
    # Configurations of one method stay apart when the table is split by their parameters.
    other = [json.loads(json.dumps(r)) for r in a]
    for r in other:
        r["method_params"]["epochs"] = 9
    split = steps_table(a + other, by=["epochs"])
    assert re.search(r"\| ft \(epochs=1\)\s+\| 2\s+\| 1 ", split) and "ft (epochs=9)" in split
    with pytest.raises(ConfigError, match="scenario.oracle=true"):
        run_sequence("method=retrain", "scenario.steps=2", "scenario.oracle=false")
