"""Equal-budget tuning (`python -m unlearn tune`, docs/tuning.md): search spaces, the plan and its refusals, a trial
run, the tuned.json record in the final rows, and conf/tuned files that say where their values came from."""
from __future__ import annotations

import argparse
import json

import pytest
from omegaconf import OmegaConf

from unlearn.config import compose_config
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.protocol import Dimension, Protocol
from unlearn.tune import main, plan, write_tuned

from conftest import TINY


def test_dimensions_parse_and_speak_the_sweepers_grammar():
    assert Dimension.parse("lr", {"low": 1e-3, "high": 1e-1, "log": True}).sweeper() == "tag(log, interval(0.001, 0.1))"
    assert Dimension.parse("epochs", {"low": 2, "high": 10, "int": True}).sweeper() == "int(interval(2, 10))"
    assert Dimension.parse("stream", {"choices": ["forget", "union"]}).sweeper() == "choice(forget,union)"
    assert Dimension.parse("epochs", {"low": 2, "high": 10, "int": True}).describe() == \
        {"low": 2, "high": 10, "log": False, "int": True}


@pytest.mark.parametrize("spec,message", [
    ({"low": 0.1, "high": 0.1}, "is empty"),
    ({"low": 0.1, "high": 0.01}, "is inverted"),
    ({"low": 0.0, "high": 1.0, "log": True}, "log range needs low > 0"),
    ({"low": 1.5, "high": 3, "int": True}, "whole bounds"),
    ({"choices": []}, "choices is empty"),
    ({"low": 1}, "finite numbers low and high"),
    ({"lo": 1, "high": 2}, "unknown fields"),
    (0.1, "must be"),
])
def test_bad_ranges_are_one_line(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        Dimension.parse("lr", spec)
    assert "\n" not in str(err.value)


def test_a_space_names_knobs_of_the_method():
    with pytest.raises(ConfigError, match="method.space.lrr names no knob"):
        Protocol.of({"lr": 0.1, "space": {"lrr": {"low": 0.1, "high": 1.0}}})


TINY_SPACE = [*TINY, "method=ga", "method.space.epochs.high=3"]


@pytest.mark.parametrize("overrides,kwargs,message", [
    (["budget=0"], {}, "budget=0 must be >= 1"),
    ([], {}, "tune needs budget=N"),
    (["budget=2"], {"tune_seed": 1, "seeds": "0,1"}, "disjoint from the reported ones"),
    (["budget=2", "method.space.lr.low=1.0"], {}, "is inverted"),
    (["budget=2", "method.eval_every=3"], {}, "beyond the fewest epochs the space allows"),
    (["budget=2", "forget=class", "forget.classes=[0,1,2,3,4,5]"], {}, "only 4 other class"),
    (["budget=2", "seed=3"], {}, "tune sets seed="),
])
def test_the_plan_refuses_bad_input_before_any_trial(tmp_path, overrides, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan([*TINY_SPACE, f"cache_dir={tmp_path}", *overrides], **kwargs)
    assert not list(tmp_path.rglob("original-*"))  # nothing trained


def test_the_record_goes_inline_and_hydra_reads_it_back():
    from unlearn.config import plain
    from unlearn.tune import hydra_value

    record = {"budget": 8, "best": {"lr": 1e-05, "epochs": 2}, "none": None, "flag": True, "list": [1, "a b"],
              "command": "python -m unlearn tune method=ga 'forget.classes=[3]' --on \"x\" ${oops} a\\b \\\"q", "end": "trailing\\"}
    assert plain(compose_config(f"tuning.record={hydra_value(record)}").tuning.record) == record


def test_a_method_without_a_space_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="declares no search space"):
        plan([*TINY, "method=scrub", "budget=2", f"cache_dir={tmp_path}"])


def test_the_plan_runs_trials_on_a_tuning_seed_and_the_best_on_the_reported_ones(tmp_path):
    p = plan([*TINY_SPACE, "budget=3"], seeds="0,1", tune_seed=100, out=str(tmp_path))
    trials = " ".join(p.trials())
    assert "hydra.sweeper.n_trials=3" in trials and "tuning.trial=true" in trials and "seed=100" in trials
    assert "method.lr=tag(log, interval(0.001, 0.1))" in trials and "method.epochs=int(interval(2, 3))" in trials
    final = " ".join(p.final({"lr": 0.02, "epochs": 3}, {"budget": 3}))
    assert "seed=0,1" in final and "method.lr=0.02" in final and "tuning.record={budget:3}" in final
    oracle = plan([*TINY_SPACE, "budget=3"], seeds="0,1", on="reported", out=str(tmp_path))
    assert "seed=0" in oracle.trials() and "tuning.request=reported" in oracle.trials()


def test_a_trial_runs_the_method_on_the_validation_request_only(shared_cache, tmp_path):
    from unlearn.runtime import derive_seed

    cfg = compose_config(*TINY, f"cache_dir={shared_cache}", f"table_path={tmp_path / 't.jsonl'}", "method=ga",
                         "method.epochs=2", "tuning.trial=true", "seed=100")
    x = Experiment(cfg)
    row = x.run(run_dir=tmp_path / "trial")
    assert row["trial"] == {"request": "validation", "select": "last"} and row["forget"]["validation"] is True
    scored = json.loads((tmp_path / "trial" / "forget_indices.json").read_text())["indices"]
    reported = x.builder.build(x.data()[0], derive_seed(100, "forget")).indices  # seed 100's own request F
    assert len(scored) == len(reported) and not set(scored) & set(reported.tolist())


def test_tune_end_to_end_writes_the_record_into_the_rows(shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE", str(shared_cache))
    args = argparse.Namespace(overrides=[*TINY_SPACE, "budget=1"], seeds="0",
                              tune_seed=100, on="validation", out=str(tmp_path), experiment="e2e", sampler_seed=0,
                              write=False)
    assert main(args) == 0
    record = json.loads((tmp_path / "e2e" / "tuned_ga.json").read_text())
    assert record["budget"] == 1 and set(record["best"]) == {"lr", "epochs"} and record["validation"]["seed"] == 100
    rows = [json.loads(line) for line in (tmp_path / "e2e" / "table.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0] and rows[0]["tuned"] == record
    assert rows[0]["method_params"]["lr"] == pytest.approx(record["best"]["lr"])
    trials = (tmp_path / "e2e_trials" / "table.jsonl").read_text().splitlines()
    assert len(trials) == 1 and json.loads(trials[0])["seed"] == 100


def test_a_tuned_file_records_its_command_and_keeps_what_it_held(tmp_path):
    (tmp_path / "tuned" / "facts").mkdir(parents=True)
    (tmp_path / "tuned" / "facts" / "npo.yaml").write_text(
        "# @package _global_\n# why these values\nmethod:\n  optimizer: adamw\n  lr: 1e-4\n  alpha: 3.0\n")
    record = {"command": "python -m unlearn tune method=npo budget=8", "time": "now", "budget": 8, "best_value": 0.5}
    path = write_tuned("facts", "npo", {"lr": 3e-5, "epochs": 4}, record, conf_dir=tmp_path)
    text = path.read_text()
    assert text.startswith("# @package _global_\n# tuned by: python -m unlearn tune method=npo budget=8")
    assert "# Notes kept from before the latest tuning" in text and "# why these values" in text
    written = OmegaConf.to_container(OmegaConf.load(path))
    assert written["method"] == {"optimizer": "adamw", "lr": 3e-5, "alpha": 3.0, "epochs": 4}
    assert written["tuning"]["record"] == record
    again = write_tuned("facts", "npo", {"lr": 4e-5}, {**record, "command": "second"}, conf_dir=tmp_path).read_text()
    assert again.count("# Notes kept") == 1 and again.count("# why these values") == 1 and "# tuned by: second" in again
    assert "# tuned by: python" not in again and again.count("# on now") == 1


def test_a_row_says_which_tuned_values_its_run_overrode():
    from unlearn.protocol import Tuning

    tuning = Tuning(record={"budget": 8, "best": {"lr": 2.4481975040542315e-04, "epochs": 9}})
    assert "overridden" not in tuning.recorded({"lr": 0.00024481975040542315, "epochs": 9, "beta": 0.1})
    assert tuning.recorded({"lr": 5e-4, "epochs": 9})["overridden"] == {"lr": 5e-4}
    assert tuning.recorded()["best"]["epochs"] == 9


def test_a_run_with_tuned_defaults_carries_their_record_and_what_it_overrode(run_experiment):
    """conf/tuned/facts/npo.yaml holds the configuration a tuning found and its record (tuning.record); a run with those
    defaults says where they came from in its row, and which of them it replaced."""
    from test_llm import ADAMW, TINY_LLM

    composed = compose_config("data=facts", "method=npo")
    record = OmegaConf.to_container(composed.tuning.record)
    assert record["validation"]["request"] == "validation" and record["command"].startswith("python -m unlearn tune")
    assert composed.method.lr == pytest.approx(record["best"]["lr"])
    row = run_experiment(*TINY_LLM, "method=npo", *ADAMW, "method.lr=5e-4", "method.epochs=2", tiny=False)
    assert row["tuned"]["best"] == record["best"]
    assert row["tuned"]["overridden"] == {"lr": 5e-4, "epochs": 2}  # β stays the tuned one
    assert row["method_params"]["beta"] == pytest.approx(record["best"]["beta"])
