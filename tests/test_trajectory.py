"""The unlearning trajectory (method.eval_every, docs/tuning.md): the loop's probe, the row's `trajectory`, the run
dir's trajectory.jsonl, compare's plot, and the bad input refused before anything trains."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from unlearn.config import compose_config
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.runtime import Runtime
from unlearn.training import OptimConfig, Streams, optimise

from conftest import TINY


class Recorder:
    """A probe that keeps a copy of the weights at each call and ends the loop at `stop_at` steps."""

    def __init__(self, every: int, unit: str, stop_at: int | None = None):
        self.every, self.unit, self.stop_at, self.seen = every, unit, stop_at, {}

    def __call__(self, model, step, epoch):
        self.seen[step] = [p.detach().clone() for p in model.parameters()]
        model.eval()  # a probe evaluates in eval mode; the loop must put the model back in train mode
        return self.stop_at is not None and step >= self.stop_at


def _loop(probe=None):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = TensorData(x=torch.randn(40, 3), y=torch.randint(0, 2, (40,)))
    objective = lambda m, f, r: nn.functional.cross_entropy(m(r["x"]), r["y"])  # noqa: E731
    config = OptimConfig(epochs=3, lr=0.1, batch_size=8, schedule="cosine")
    optimise(model, objective, Streams(retain=data, mode="retain"), config, Runtime.from_config("cpu", "fp32", False, 1),
             torch.Generator().manual_seed(0), probe=probe)
    return model


def test_the_probe_sees_every_kth_step_and_stopping_keeps_the_full_runs_checkpoint():
    full = Recorder(every=4, unit="step")
    end = _loop(full)
    assert sorted(full.seen) == [0, 4, 8, 12]  # 15 steps (3 epochs of 5): step 0 and every 4th
    assert all(torch.equal(a, b) for a, b in zip(end.parameters(), _loop().parameters()))  # probing changes nothing
    stopped = _loop(Recorder(every=4, unit="step", stop_at=8))
    # The schedule stays the full run's, so the stopped model is the full run's checkpoint at step 8.
    assert all(torch.equal(a, b) for a, b in zip(stopped.parameters(), full.seen[8]))
    epochs = Recorder(every=1, unit="epoch")
    _loop(epochs)
    assert sorted(epochs.seen) == [0, 5, 10, 15]


def _experiment(shared_cache, tmp_path, *overrides):
    cfg = compose_config(*TINY, f"cache_dir={shared_cache}", f"results_dir={tmp_path}",
                         f"table_path={tmp_path / 'table.jsonl'}", "method=ga", "method.epochs=4", *overrides)
    return Experiment(cfg)


def test_a_run_records_its_trajectory_without_changing_its_result(shared_cache, tmp_path):
    plain = _experiment(shared_cache, tmp_path).run(run_dir=tmp_path / "plain")
    x = _experiment(shared_cache, tmp_path, "method.eval_every=2")
    row = x.run(run_dir=tmp_path / "traced")
    curve = row["trajectory"]
    assert curve["unit"] == "epoch" and curve["epoch"] == [0.0, 2.0, 4.0] and curve["metrics"] == ["UA", "RA", "TA", "MIA"]
    assert set(curve["oracle"]) == {"UA", "RA", "TA", "MIA"} and len(curve["avg_gap"]) == 3
    # Evaluating along the way leaves the method's model as it was, and its time is kept out of the RTE.
    assert {k: row["metrics"][k] for k in ("UA", "RA", "TA")} == {k: plain["metrics"][k] for k in ("UA", "RA", "TA")}
    assert x.stage.building_seconds.wall > 0
    lines = (tmp_path / "traced" / "trajectory.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0.0, 2.0, 4.0]


def test_compare_plots_the_trajectories_and_the_page_shows_them(shared_cache, tmp_path):
    from unlearn.report import html
    from unlearn.report.compare import compare
    from unlearn.results import load

    _experiment(shared_cache, tmp_path, "method.eval_every=1", "method.eval_unit=step").run(run_dir=tmp_path / "run")
    frame = load(tmp_path / "table.jsonl")
    compare(frame, plot_path=tmp_path / "compare.png")
    assert (tmp_path / "compare_trajectory.png").stat().st_size > 1000
    page = html.page("t", frame, "method", ())
    assert "Unlearning trajectories" in page


@pytest.mark.parametrize("overrides,message", [
    (["method.eval_every=0"], "eval_every=0 is out of range"),
    (["method.eval_every=5"], "beyond the method's 4 epochs"),
    (["method.eval_every=2", "method.eval_unit=fortnight"], "eval_unit"),
    (["method.eval_every=1", "method.select_metric=kl_forget"], "select_metric"),
    (["method=scrub", "method.eval_every=1"], "loop of its own"),
])
def test_bad_trajectory_settings_are_one_line_before_anything_trains(shared_cache, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        _experiment(tmp_path / "empty-cache", tmp_path, *overrides)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*.pt"))


def test_steps_beyond_the_methods_and_unknown_metrics_are_refused_before_unlearning(shared_cache, tmp_path):
    x = _experiment(shared_cache, tmp_path, "method.eval_every=1000", "method.eval_unit=step")
    with pytest.raises(ConfigError, match="beyond the method's 4 steps"):
        x.run(run_dir=tmp_path / "run")
    x = _experiment(shared_cache, tmp_path, "method.eval_every=1", "method.eval_metrics=[UA,nosuch]")
    with pytest.raises(ConfigError, match=r"nosuch.*it reports: UA"):
        x.run(run_dir=tmp_path / "run2")
