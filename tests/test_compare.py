"""compare on the results DataFrame: formats, grouping, metric choice, sequences (rows with a `step`), CLI."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from unlearn.errors import UnlearnError
from unlearn.report.compare import compare
from unlearn.results import load


def sequence_rows(steps=(1, 2, 3), seeds=(0, 1)) -> list[dict]:
    """Hand-built rows of a deletion stream, in the row schema (unlearn/report/row.py), for a task kind compare
    has never heard of: at step k the oracle scores forget_score 10k and utility 90; `ga` scores 10k + 2 + 2·seed
    (gap 2 or 4, mean 3) and utility 80 - k (gap 10 + k)."""
    rows = []
    for step in steps:
        oracle = {"forget_score": 10.0 * step, "utility": 90.0, "RTE_s": 4.0}
        for seed in seeds:
            ga = {"forget_score": 10.0 * step + 2 + 2 * seed, "utility": 80.0 - step, "RTE_s": 1.0}
            for method, metrics in (("retrain", oracle), ("ga", ga)):
                gap = {m: abs(metrics[m] - oracle[m]) for m in ("forget_score", "utility")}
                rows.append({
                    "schema": 1, "run_id": f"{method}{seed}", "task": "toy", "data": "stream", "model": "tiny",
                    "forget": {"builder": "random", "ratio": 0.1, "count": None, "size": 5 * step},
                    "method": method, "method_params": {"lr": 0.01, "epochs": 2} if method == "ga" else {},
                    "seed": seed, "status": "ok", "metrics": metrics, "gap": gap, "avg_gap": sum(gap.values()) / 2,
                    "rte_relative": metrics["RTE_s"] / 4.0,
                    "reference": {"original": {"forget_score": 0.0, "utility": 91.0, "RTE_s": float("nan")}, "oracle": oracle},
                    "timings": {"original_s": 1.0}, "command": "hand-built", "run_dir": None, "config": {},
                    "scenario": "sequence", "step": step})
    return rows


@pytest.fixture
def sequence_table(tmp_path):
    path = tmp_path / "stream" / "table.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in sequence_rows()))
    return path


def test_compare_formats_and_plot(run_experiment, tmp_path):
    for seed in (0, 1):
        run_experiment("method=ga", f"seed={seed}")
        run_experiment("method=retrain", f"seed={seed}")
    table = tmp_path / "outputs" / "table.jsonl"
    md = compare(table, plot_path=tmp_path / "plot.png")
    lines = [line.split("|")[1:3] for line in md.splitlines() if line.startswith("| ")]
    assert "Avg.Gap 95% CI" in md and [c.strip() for c in lines[1]] == ["retrain", "2"]
    assert [c.strip() for c in lines[2]] == ["ga", "2"]
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    csv_lines = compare(table, fmt="csv").splitlines()
    assert "UA_ci95" in csv_lines[0] and len(csv_lines) == 3
    latex = compare(table, fmt="latex")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and r"95\% CI" in latex and r"forget=\{" in latex
    assert "| 0.01 " in compare(table, by="method_params.lr")
    chosen = compare(table, metrics=["mia_entropy", "kl_test_p95"]).splitlines()
    header = next(line for line in chosen if line.startswith("| method"))
    assert "mia_entropy" in header and "kl_test_p95" in header and "kl_forget " not in header
    with pytest.raises(UnlearnError, match="no_such_metric: no row has them"):
        compare(table, metrics=["no_such_metric"])
    with pytest.raises(UnlearnError, match="--by method_params.nope: no such column"):
        compare(table, by="method_params.nope")


def test_compare_cli(run_experiment, tmp_path):
    run_experiment("method=ga")
    out = tmp_path / "table.md"
    result = subprocess.run([sys.executable, "-m", "unlearn", "compare", str(tmp_path / "outputs"), "--out", str(out),
                             "--html", str(tmp_path / "report.html")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == result.stdout and out.with_suffix(".png").exists()
    assert "<table" in (tmp_path / "report.html").read_text()
    missing = subprocess.run([sys.executable, "-m", "unlearn", "compare", str(tmp_path / "nothing")],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "no results at" in missing.stderr


def test_each_step_of_a_sequence_is_its_own_table_against_that_steps_oracle(sequence_table, tmp_path):
    md = compare(sequence_table, plot_path=tmp_path / "plot.png")
    titles = [line for line in md.splitlines() if line.startswith("### ")]
    assert [t.rsplit(" · ", 2)[1:] for t in titles] == [["scenario=sequence", f"step={k}"] for k in (1, 2, 3)]
    for k, block in zip((1, 2, 3), md.split("### ")[1:]):
        ga = next(line for line in block.splitlines() if line.startswith("| ga "))
        # forget_score 10k+2 and 10k+4: mean 10k+3, sample std √2, gap 3 to that step's oracle
        assert f"{10 * k + 3:.2f} ± 1.41 (3.00)" in ga and f"{80 - k:.2f} ± 0.00 ({10 + k:.2f})" in ga
    assert (tmp_path / "plot_steps.png").stat().st_size > 10_000
    csv = compare(sequence_table, fmt="csv").splitlines()
    assert csv[0].startswith("task,data,model,forget,scenario,step,method,n,forget_score_mean") and len(csv) == 7


def test_rows_of_one_run_per_step_are_all_kept_and_steps_are_integers(sequence_table):
    frame = load(sequence_table)
    assert len(frame) == 12 and str(frame["step"].dtype) == "Int64" and sorted(set(frame["step"])) == [1, 2, 3]
    assert frame.attrs["metrics"] == ["forget_score", "utility", "RTE_s"]
    assert frame.loc[frame["method"] == "ga", "method_params.epochs"].tolist() == [2] * 6
    assert frame["method_params.epochs"].isna().sum() == 6  # retrain has no parameters; epochs stays an integer column
