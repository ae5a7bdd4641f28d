"""The one step engine: a stream's steps get everything a single run gets (attacks, pruning's sparsity, pictures,
diffusion class requests), each step's model has its own identity, and what a stream cannot carry is refused."""
from __future__ import annotations

import pytest

from conftest import TINY
from test_diffusion import ADAM, TINY_DIFFUSION
from unlearn.config import build, compose_config
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.results import load_rows


def stream(tmp_path, cache, *overrides: str, run: str = "run") -> list[dict]:
    table = tmp_path / run / "table.jsonl"
    cfg = compose_config(f"cache_dir={cache}", "scenario=sequence", "scenario.steps=2", f"table_path={table}",
                         f"results_dir={tmp_path}", *overrides)
    build(cfg.scenario).run(Experiment(cfg), run_dir=tmp_path / run)
    return load_rows(table)


def test_a_stream_attacks_every_step_and_its_references(tmp_path, shared_cache):
    rows = stream(tmp_path, shared_cache, *TINY, "method=ga", "method.epochs=2", "attack=relearn", "attack.steps=2")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for values in (row["metrics"], row["reference"]["original"], row["reference"]["oracle"]):
            assert {"relearn.UA", "relearn.TA"} <= set(values) and values["relearn.UA"] == values["relearn.UA"]
    from unlearn.report.compare import steps_table

    assert "relearn.UA" in steps_table(rows)  # the end-of-run table shows the attack's figures too
    # the attack really trained the step's model: some metric of it moved
    assert any(r["metrics"][f"relearn.{m}"] != r["metrics"][m] for r in rows for m in ("UA", "RA", "TA", "MIA"))


def test_a_pruned_stream_records_sparsity_per_step(tmp_path, shared_cache):
    rows = stream(tmp_path, shared_cache, *TINY, "prune=omp", "prune.rate=0.8", "prune.rewind_epoch=1",
                  "method=ft", "method.epochs=1")
    for row in rows:
        assert row["metrics"]["sparsity"] == pytest.approx(row["reference"]["original"]["sparsity"], abs=1e-6)
        assert row["metrics"]["sparsity"] > 0.5


def test_a_class_stream_on_a_diffusion_model_scores_and_draws_every_step(tmp_path, shared_cache):
    rows = stream(tmp_path, shared_cache, *TINY_DIFFUSION, "threads=1", "scenario.kind=classes",
                  "scenario.classes_per_step=1", "method=rl", *ADAM, "method.epochs=1")
    assert [r["forget"]["classes"] for r in rows] == [rows[0]["request"]["classes"],
                                                       sorted(rows[0]["request"]["classes"] + rows[1]["request"]["classes"])]
    for k, row in enumerate(rows, start=1):
        assert {"UA", "earlier_UA"} <= set(row["metrics"]) and (tmp_path / "run" / f"step_{k}" / "generations.png").exists()
    assert rows[1]["metrics"]["earlier_UA"] == rows[1]["metrics"]["earlier_UA"]  # step 1's class, scored at step 2


def test_a_request_that_adds_data_is_refused_before_training(tmp_path):
    cfg = compose_config("data=facts", "forget=corrupt", "scenario=sequence", f"cache_dir={tmp_path}", "device=cpu")
    with pytest.raises(ConfigError, match=r"forget=corrupt adds data .* use scenario=single"):
        build(cfg.scenario).run(Experiment(cfg), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_stream_gives_the_same_numbers_with_a_cold_and_a_warm_cache(tmp_path):
    """At step 2 SalUn's mask is computed from step 1's model: it is keyed by that model's identity, so another
    run's step-2 mask (here one of another learning rate, whose step 1 differs) is never reused."""
    common = [*TINY, "method=salun", "method.epochs=1", "attack=relearn", "attack.steps=2"]
    warm = tmp_path / "warm-cache"
    stream(tmp_path, warm, *common, "method.lr=0.05", run="other")
    warm_rows = stream(tmp_path, warm, *common, run="warm")
    cold_rows = stream(tmp_path, tmp_path / "cold-cache", *common, run="cold")
    for warm_row, cold_row in zip(warm_rows, cold_rows):
        for values in ("metrics",):
            numbers = lambda r: {k: v for k, v in r[values].items() if "RTE" not in k}  # noqa: E731
            assert numbers(warm_row) == pytest.approx(numbers(cold_row), rel=1e-9, nan_ok=True)


def test_a_concept_stream_on_a_text_to_image_model_erases_one_concept_per_step(tmp_path, shared_cache):
    from test_t2i import TINY_WORLD

    rows = stream(tmp_path, shared_cache, *TINY_WORLD, "scenario.kind=concepts", "scenario.concepts=[white,circle]",
                  "method=uce")
    assert [r["request"]["concept"] for r in rows] == ["white", "circle"]
    assert rows[1]["forget"]["concepts"] == ["white", "circle"]
    for k, row in enumerate(rows, start=1):
        assert {"UA", "IRA", "CRA", "earlier_UA"} <= set(row["metrics"])
        assert (tmp_path / "run" / f"step_{k}" / "generations.png").exists()
    assert rows[1]["metrics"]["earlier_UA"] == rows[1]["metrics"]["earlier_UA"]  # white, scored again at step 2
    with pytest.raises(ConfigError, match=r"scenario.concepts names 'circle' twice|every shape"):
        stream(tmp_path, shared_cache, *TINY_WORLD, "scenario.kind=concepts", "scenario.concepts=[circle,circle]",
               "method=uce", run="twice")


def test_the_steps_command_prints_a_streams_table(tmp_path, capsys):
    from conftest import ROOT
    from unlearn.__main__ import main

    out = tmp_path / "steps.md"
    assert main(["steps", str(ROOT / "results" / "sequence_sisa.jsonl"), "--metrics", "TA,UA", "--out", str(out),
                 "--plot", str(tmp_path / "steps.png")]) == 0
    text = capsys.readouterr().out
    assert "| sisa" in text and out.read_text() == text and (tmp_path / "steps.png").stat().st_size > 10_000
    assert main(["steps", str(tmp_path / "missing.jsonl")]) == 2


def test_every_part_of_the_evaluation_is_logged_when_it_starts(run_experiment, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="unlearn"):
        run_experiment("method=ga", "method.epochs=1", "attack=relearn", "attack.steps=1")
    lines = [r.getMessage() for r in caplog.records]
    starts = [line for line in lines if line.startswith("evaluation: ") and line.endswith(" ...")]
    assert starts == [f"evaluation: {part} ..." for part in (
        "the original", "the oracle", "the unlearned model (ga)", "relearn attack on the unlearned model",
        "relearn attack on the original", "relearn attack on the oracle")]
    for start in starts:  # each logged before its work, its time after
        done = next(i for i, line in enumerate(lines) if line.startswith(start[:-4] + ": done in "))
        assert lines.index(start) < done
