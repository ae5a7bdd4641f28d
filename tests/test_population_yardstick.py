"""A population's KLoM read against what it gives for known models: the original (no unlearning) against the oracles,
and independent retrains against each other; and the warning when N is too small to tell them apart."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from unlearn.eval.population import SPLITS, klom_yardsticks, unresolved_splits


def _stats(centres: list[float], rng: np.random.Generator, n_examples: int = 50) -> list[dict[str, np.ndarray]]:
    return [{s: rng.normal(c, 0.1, n_examples) for s in SPLITS} for c in centres]


def test_yardsticks_on_known_populations():
    rng = np.random.default_rng(0)
    # Oracles all near 0, originals far away at 5: no unlearning reads KLoM's ceiling (every original's margin lands
    # where no oracle's does: log(1/1e-5) ≈ 11.5 nats); 200 retrains against 200 others read far less.
    stats = {"oracle": _stats([0.0] * 400, rng), "original": _stats([5.0] * 400, rng), "unlearned": _stats([0.0] * 400, rng)}
    y = klom_yardsticks(stats)
    for s in SPLITS:
        assert y["original"][f"klom_{s}"] > 10
        assert y["oracle"][f"klom_{s}"] < 1
    assert unresolved_splits(y) == []
    # With 4 models a side the same retrains read near the ceiling: the yardstick shows N is the limit, not the method.
    few = klom_yardsticks({role: members[:8] for role, members in stats.items()})
    assert few["oracle"]["klom_forget"] > 5
    # Originals drawn like the oracles: the metric cannot separate them, and says on which splits.
    same = {"oracle": _stats([0.0] * 4, rng), "original": _stats([0.0] * 4, rng), "unlearned": _stats([0.0] * 4, rng)}
    y = klom_yardsticks(same)
    assert set(unresolved_splits(y)) <= set(SPLITS)
    # Identical oracles: the retrain floor is exactly 0.
    fixed = [{s: np.zeros(10) for s in SPLITS} for _ in range(4)]
    y = klom_yardsticks({"oracle": fixed, "original": fixed, "unlearned": fixed})
    assert all(y["oracle"][f"klom_{s}"] == 0 == y["original"][f"klom_{s}"] for s in SPLITS)
    assert unresolved_splits(y) == list(SPLITS)  # 0 is not below 0: nothing to read


def test_a_population_run_shows_the_yardsticks_in_the_original_and_retrain_rows(run_experiment, caplog):
    from unlearn.report.row import summary_table

    with caplog.at_level(logging.WARNING, logger="unlearn"):
        row = run_experiment("eval.oracles=3", "method=ga", "method.epochs=2")
    original, oracle = row["reference"]["original"], row["reference"]["oracle"]
    for s in SPLITS:
        assert np.isfinite(original[f"klom_{s}"]) and np.isfinite(oracle[f"klom_{s}"])
        assert np.isfinite(row["metrics"][f"klom_{s}"])
    unresolved = [s for s in SPLITS if not oracle[f"klom_{s}"] < original[f"klom_{s}"]]
    assert ("cannot tell the original from independent retrains" in caplog.text) == bool(unresolved)
    lines = summary_table(row).splitlines()
    header = next(i for i, line in enumerate(lines) if "| klom_forget " in line)
    column = [c.strip() for c in lines[header].split("|")].index("klom_forget")
    cells = {line.split("|")[1].strip(): line.split("|")[column].strip() for line in lines[header + 2:header + 5]}
    assert cells["Original"] == f"{original['klom_forget']:.2f}" and cells["Retrain (oracle)"] == f"{oracle['klom_forget']:.2f}"


@pytest.mark.parametrize("n", [1])
def test_one_oracle_has_no_retrain_floor(n):
    fixed = [{s: np.zeros(3) for s in SPLITS}]
    y = klom_yardsticks({"oracle": fixed, "original": fixed, "unlearned": fixed})
    assert all(np.isnan(y["oracle"][f"klom_{s}"]) for s in SPLITS)
