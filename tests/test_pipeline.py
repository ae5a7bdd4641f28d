"""The real pipeline on tiny digits: every foundation method, the cache, bad input, divergence, determinism."""
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, compose_config
from unlearn.errors import ConfigError, UnsupportedTaskError
from unlearn.pipeline import Experiment
from unlearn.report.compare import compare

# Strong settings so each method's effect is unmistakable on 400 digits within a few epochs.
METHOD_RUNS = {
    "ga": ["method=ga", "method.lr=0.05", "method.epochs=5", "method.batch_size=16"],
    "graddiff": ["method=graddiff", "method.lr=0.05", "method.epochs=5", "method.batch_size=16"],
    "rl": ["method=rl", "method.lr=0.05", "method.epochs=3", "method.batch_size=32"],
    "salun": ["method=salun", "method.lr=0.05", "method.epochs=3", "method.batch_size=32"],
}


def forget_loss(exp: Experiment, state_dict: dict, forget_x, forget_y) -> float:
    model = exp.models.new_model(exp.seed, "check")
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(forget_x), forget_y))


@pytest.mark.parametrize("method", sorted(METHOD_RUNS))
def test_forgetting_methods_raise_forget_error(run_experiment, method):
    row = run_experiment(*METHOD_RUNS[method])
    original = row["reference"]["original"]
    assert row["status"] == "ok" and row["method"] == method
    assert original["UA"] < 5.0, "the original should have memorised its forget set"
    assert row["metrics"]["UA"] > original["UA"] + 5.0, f"{method} did not lower forget accuracy"
    assert row["metrics"]["RTE_s"] > 0 and math.isfinite(row["avg_gap"])
    # CPU seconds beside wall seconds; on a CPU, RTE / Retrain compares CPU time with CPU time.
    cpu, oracle_cpu = row["metrics"]["RTE_cpu_s"], row["reference"]["oracle"]["RTE_cpu_s"]
    assert cpu > 0 and oracle_cpu > 0 and row["rte_basis"] == "cpu" and row["rte_relative"] == cpu / oracle_cpu
    assert row["environment"]["threads"] == 1


def saved_and_original(tmp_path, shared_cache, method_class: str):
    """The unlearned weights the run saved, and the (session-cached) original they started from."""
    exp = Experiment(compose_config(*TINY, f"cache_dir={shared_cache}"))
    art = exp.prepare()
    saved = torch.load(tmp_path / "run" / method_class / "0" / "model.pt")
    return exp, art, saved


def test_ft_trains_on_retain_only(run_experiment, tmp_path, shared_cache):
    run_experiment("method=ft", "method.lr=0.05", "method.epochs=3")
    exp, art, saved = saved_and_original(tmp_path, shared_cache, "FineTune")
    assert saved["config"]["_target_"].endswith("SmallCNN")
    changed = [n for n, p in art.original.state_dict().items() if not torch.equal(p, saved["state_dict"][n])]
    assert changed, "FT left every weight untouched"
    forget = exp.splits().forget
    # FT never sees the forget set: its forget loss cannot fall the way training on F would make it.
    assert forget_loss(exp, saved["state_dict"], forget["x"], forget["y"]) >= \
        forget_loss(exp, art.original.state_dict(), forget["x"], forget["y"]) - 1e-3


def test_salun_moves_only_the_salient_weights(run_experiment, tmp_path, shared_cache):
    run_experiment("method=salun", "method.mask_ratio=0.3", "method.epochs=2", "method.lr=0.05")
    _, art, saved = saved_and_original(tmp_path, shared_cache, "SalUn")
    params = dict(art.original.named_parameters())
    moved = sum(int((saved["state_dict"][n] != p.detach()).sum()) for n, p in params.items())
    total = sum(p.numel() for p in params.values())
    # Weight decay and momentum must not move masked-out weights (the reference bug).
    assert 0 < moved <= 0.3 * total + 1, f"{moved}/{total} weights moved with a 30% mask"


def test_retrain_is_the_cached_oracle(run_experiment):
    row = run_experiment("method=retrain")
    oracle = row["reference"]["oracle"]
    assert {k: row["metrics"][k] for k in ("UA", "RA", "TA", "MIA")} == {k: oracle[k] for k in ("UA", "RA", "TA", "MIA")}
    assert row["metrics"]["RTE_s"] == oracle["RTE_s"] > 0 and row["avg_gap"] == 0.0
    assert row["metrics"]["RTE_cpu_s"] == oracle["RTE_cpu_s"] > 0 and row["rte_relative"] == 1.0


def test_the_oracle_never_saw_the_forget_set(run_experiment):
    row = run_experiment("method=retrain")
    original, oracle = row["reference"]["original"], row["reference"]["oracle"]
    assert oracle["UA"] > original["UA"], "retraining without F should make F harder than for the original"


def test_second_run_reuses_original_forget_set_and_oracle(run_experiment, tmp_path, caplog):
    cache = tmp_path / "own-cache"
    first = run_experiment("method=ga", cache_dir=cache)
    assert not first["timings"]["original_cached"] and not first["timings"]["oracle_cached"]
    with caplog.at_level(logging.INFO, logger="unlearn.cache"):
        second = run_experiment("method=rl", "method.epochs=1", cache_dir=cache)
    assert second["timings"]["original_cached"] and second["timings"]["oracle_cached"]
    assert second["timings"]["forget_cached"]
    assert "original: reusing cached" in caplog.text and "oracle (retrain): reusing cached" in caplog.text
    assert json.dumps(second["reference"]) == json.dumps(first["reference"])  # (NaN-safe equality)
    # A different seed is a different original.
    third = run_experiment("method=ga", "seed=1", cache_dir=cache)
    assert not third["timings"]["original_cached"]


def test_same_seed_gives_identical_numbers(run_experiment, tmp_path):
    rows = [run_experiment("method=salun", "method.epochs=2", cache_dir=tmp_path / f"c{i}") for i in range(2)]
    strip = lambda m: {k: v for k, v in m.items() if "RTE" not in k}  # noqa: E731
    assert strip(rows[0]["metrics"]) == strip(rows[1]["metrics"])
    assert strip(rows[0]["reference"]["oracle"]) == strip(rows[1]["reference"]["oracle"])


def test_nan_loss_is_recorded_as_diverged_and_the_row_written(run_experiment, tmp_path):
    row = run_experiment("method=ga", "method.lr=1e30", "method.epochs=3")
    assert row["status"] == "diverged"
    assert all(math.isnan(row["metrics"][k]) for k in ("UA", "RA", "TA", "MIA"))
    rows = [json.loads(line) for line in (tmp_path / "outputs" / "table.jsonl").read_text().splitlines()]
    assert rows[-1]["status"] == "diverged"
    assert run_experiment("method=ga")["status"] == "ok"  # the sweep goes on


@pytest.mark.parametrize("override,message", [
    ("forget.ratio=1.5", r"forget.ratio=1.5 is out of range: it must be a number in \(0, 1\)"),
    ("forget=class forget.classes=[10]", "not a class"),
    ("forget=class forget.classes=[0,1,2,3,4,5,6,7,8,9]", "covers all 10 classes"),
    ("forget.ratio=0.0001", "selects nothing"),
])
def test_bad_input_fails_before_training(override, message, tmp_path):
    cfg = compose_config(*TINY, f"cache_dir={tmp_path / 'cache'}", *override.split())
    with pytest.raises(ConfigError, match=message):
        Experiment(cfg).prepare()
    assert not list((tmp_path / "cache").glob("original-*")), "nothing may be trained for a bad config"


def test_method_refuses_a_task_it_does_not_support():
    from unlearn.methods.base import Method

    class ClassifierOnly(Method):
        name = "toy"
        supports = ("llm",)

    with pytest.raises(UnsupportedTaskError, match="toy.*does not apply to classification.*supports: llm"):
        ClassifierOnly().check(Experiment(compose_config(*TINY)).task)


def test_compare_puts_retrain_first_and_keeps_settings_apart(run_experiment, tmp_path):
    for overrides in (["method=ga"], ["method=rl", "method.epochs=1"], ["method=retrain"],
                      ["method=ga", "forget=class", "forget.classes=[3]"]):
        run_experiment(*overrides)
    text = compare(tmp_path / "outputs" / "table.jsonl")
    tables = text.split("### ")[1:]
    assert len(tables) == 2, "random and class-wise forgetting must not be mixed"
    random_table = next(t for t in tables if '"random"' in t)
    lines = [l for l in random_table.splitlines() if l.startswith("| ")]
    assert lines[1].startswith("| retrain") and any(l.startswith("| ga ") for l in lines)
    csv = compare(tmp_path / "outputs", fmt="csv")
    assert csv.splitlines()[0].startswith("task,data,model,forget,method,n,UA")


def run_cli(*args, env_extra=None, cwd=ROOT):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_unknown_method_lists_the_choices(tmp_path):
    result = run_cli("method=nope", f"results_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], "one line, no Hydra traceback"
    assert "method=nope is not a method config" in result.stderr and "salun" in result.stderr
    sweep = run_cli("-m", "method=ft,nope", f"results_dir={tmp_path}")
    assert sweep.returncode == 2 and "method=nope" in sweep.stderr and not any(tmp_path.rglob("*.*"))


def test_cli_bad_ratio_is_one_clear_line_and_leaves_nothing(tmp_path):
    result = run_cli("forget.ratio=1.5", f"results_dir={tmp_path / 'out'}", env_extra={"UNLEARN_CACHE": str(tmp_path / "c")})
    assert result.returncode == 2
    assert "error: forget.ratio=1.5 is out of range: it must be a number in (0, 1) or null" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any((tmp_path / "out").rglob("*.*")), "a refused run must leave no files"
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("*.safetensors"))


def test_cli_multirun_trains_original_and_oracle_once(tmp_path):
    result = run_cli("-m", "method=ga,rl", "method.epochs=1", *TINY, f"results_dir={tmp_path / 'out'}",
                     env_extra={"UNLEARN_CACHE": str(tmp_path / "c")})
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert log.count("original: not cached") == 1 and log.count("original: reusing cached") == 1
    assert log.count("oracle (retrain): not cached") == 1
    rows = (tmp_path / "out" / "default" / "table.jsonl").read_text().splitlines()
    assert [json.loads(r)["method"] for r in rows] == ["ga", "rl"]
    assert all(json.loads(r)["command"].startswith("python ") and " -m " in json.loads(r)["command"] for r in rows)
    runs = sorted((tmp_path / "out" / "default" / "sweeps").glob("*/*/result.json"))
    assert len(runs) == 2 and all((r.parent / "forget_indices.json").exists() for r in runs)


def _prepared(tmp_path, name: str, *overrides: str):
    # The tiny recipe is far below the FLOPs at which auto starts a second process: true forces it.
    exp = Experiment(compose_config(*TINY, f"cache_dir={tmp_path / name}", "parallel_training=true", *overrides))
    epochs = []
    return exp, exp.prepare(lambda stage, epoch, loss: epochs.append(stage)), epochs


def _same_models(a, b) -> bool:
    return all(torch.equal(a.original.state_dict()[k], b.original.state_dict()[k]) for k in a.original.state_dict()) \
        and all(torch.equal(a.oracle.state_dict()[k], b.oracle.state_dict()[k]) for k in a.oracle.state_dict())


@pytest.fixture
def two_cores(monkeypatch):
    """The machine the second process needs (two cores for two one-thread processes), whatever runs the suite."""
    import unlearn.pipeline.beside

    monkeypatch.setattr(unlearn.pipeline.beside, "available_cores", lambda: 2)


def test_original_trains_beside_the_oracle_and_is_the_model_trained_alone(tmp_path, two_cores):
    """Two cores, threads=1: the original trains in a second process on one thread while the oracle trains here on
    the other, so both are exactly the models of a sequential run (same thread count, same cache keys), and the
    original's epochs are still reported."""
    exp, beside, epochs = _prepared(tmp_path, "beside")
    assert beside.timings.get("beside_oracle") is True
    assert beside.timings["forget_cached"] is False  # chosen in this run, and its row says so
    assert torch.get_num_threads() == 1
    assert epochs.count("original") == epochs.count("oracle") == 15
    _, alone, _ = _prepared(tmp_path, "alone", "parallel_training=false")
    assert "beside_oracle" not in alone.timings
    assert _same_models(beside, alone) and (beside.original_key, beside.oracle_key) == (alone.original_key, alone.oracle_key)


def test_a_failed_second_process_trains_the_original_here(tmp_path, monkeypatch, caplog, two_cores):
    import unlearn.pipeline.beside

    monkeypatch.setattr(unlearn.pipeline.beside, "CHILD", "import sys; sys.exit('no room here')")
    with caplog.at_level(logging.WARNING, logger="unlearn"):
        _, failed, _ = _prepared(tmp_path, "failed")
    assert "second process failed (exit 1: no room here)" in caplog.text
    _, alone, _ = _prepared(tmp_path, "alone", "parallel_training=false")
    assert _same_models(failed, alone)


@pytest.mark.parametrize("override, reason", [("forget=worst_case", "the forget set depends on the original"),
                                              ("parallel_training=false", "parallel_training=false"),
                                              ("prune=omp", "pruning"),
                                              ("parallel_training=auto", "a short training"),
                                              ("threads=2", "2 cores for two processes of 2 threads")])
def test_the_original_trains_first_where_the_oracle_needs_it(override, reason, two_cores, tmp_path):
    try:
        exp = Experiment(compose_config(*TINY, override, f"cache_dir={tmp_path}"))  # nothing cached yet
        assert exp.beside.why_not(exp.seed).startswith(reason)
    finally:
        torch.set_num_threads(1)


def test_parallel_training_takes_auto_true_or_false():
    with pytest.raises(ConfigError, match="parallel_training='sometimes' must be auto, true or false"):
        Experiment(compose_config(*TINY, "parallel_training=sometimes"))


def test_a_cached_original_or_oracle_keeps_one_process(tmp_path, two_cores):
    _prepared(tmp_path, "cache", "parallel_training=false")
    again = Experiment(compose_config(*TINY, f"cache_dir={tmp_path / 'cache'}", "parallel_training=true"))
    assert again.beside.why_not(again.seed) == "the original or the oracle is cached"


def test_threads_auto_is_one_for_small_models_and_the_count_is_in_keys_and_rows(tmp_path, monkeypatch):
    """threads=auto depends on the config only: one thread below the step-FLOP bound (every embedded default),
    torch's default above it. The thread count that trains a CPU model is in its cache key and in the row."""
    import unlearn.runtime

    try:
        auto = Experiment(compose_config(*[o for o in TINY if o != "threads=1"], f"cache_dir={tmp_path}"))
        assert auto.cfg.threads == "auto" and auto.runtime.threads == 1 == torch.get_num_threads()
        assert auto.models.training_flop()[0] < unlearn.runtime.ONE_THREAD_MAX_STEP_FLOP
        two = Experiment(compose_config(*TINY[:-1], "threads=2", f"cache_dir={tmp_path}"))
        assert two.runtime.threads == 2
        assert two.models.dense_original_key(0) != auto.models.dense_original_key(0)
        monkeypatch.setattr(unlearn.runtime, "ONE_THREAD_MAX_STEP_FLOP", 1.0)  # every model is now "large"
        large = Experiment(compose_config(*TINY[:-1], f"cache_dir={tmp_path}"))
        assert large.runtime.threads == unlearn.runtime.default_threads()
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ConfigError, match="threads must be auto, null"):
        Experiment(compose_config(*TINY[:-1], "threads=0"))
