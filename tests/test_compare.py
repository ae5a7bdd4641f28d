"""compare on the results DataFrame: formats, grouping, metric choice, sequences (rows with a `step`), CLI."""
import itertools
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
    assert "Avg.Gap 95% CI" in headers(md) and [c.strip() for c in lines[1]] == ["retrain", "2"]
    assert [c.strip() for c in lines[2]] == ["ga", "2"]
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    csv_lines = compare(table, fmt="csv").splitlines()
    assert "UA_ci95" in csv_lines[0] and len(csv_lines) == 3
    latex = compare(table, fmt="latex")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and r"95\% CI" in latex and r"forget=\{" in latex
    assert "| 0.01 " in compare(table, by="method_params.lr")
    chosen = headers(compare(table, metrics=["mia_entropy", "kl_test_p95"]))
    assert "mia_entropy" in chosen and "kl_test_p95" in chosen and "kl_forget" not in chosen
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
        ga = _record(block, "ga")
        # forget_score 10k+2 and 10k+4: mean 10k+3, sample std √2, gap 3 to that step's oracle; utility 80 − k on
        # both seeds: std 0 over two runs is shown (n = 2)
        assert ga["forget_score"] == f"{10 * k + 3:.2f} ± 1.41 (3.00)"
        assert ga["utility"] == f"{80 - k:.2f} ± 0.00 ({10 + k:.2f})"
    assert (tmp_path / "plot_steps.png").stat().st_size > 10_000
    csv = compare(sequence_table, fmt="csv").splitlines()
    assert csv[0].startswith("task,data,model,forget,scenario,step,method,n,forget_score_mean") and len(csv) == 7


def test_rows_of_one_run_per_step_are_all_kept_and_steps_are_integers(sequence_table):
    frame = load(sequence_table)
    assert len(frame) == 12 and str(frame["step"].dtype) == "Int64" and sorted(set(frame["step"])) == [1, 2, 3]
    assert frame.attrs["metrics"] == ["forget_score", "utility", "RTE_s"]
    assert frame.loc[frame["method"] == "ga", "method_params.epochs"].tolist() == [2] * 6
    assert frame["method_params.epochs"].isna().sum() == 6  # retrain has no parameters; epochs stays an integer column


def _variant(row: dict, score: float, oracle_score: float | None = None, **fields) -> dict:
    """A copy of a hand-built row scoring forget_score `score` (against an oracle scoring `oracle_score`, if
    given), with its gap and Avg. Gap to match, and `fields` set."""
    r = json.loads(json.dumps(row))
    if oracle_score is not None:
        r["reference"]["oracle"]["forget_score"] = oracle_score
    r["metrics"]["forget_score"] = score
    r["gap"]["forget_score"] = abs(score - r["reference"]["oracle"]["forget_score"])
    r["avg_gap"] = sum(r["gap"].values()) / 2
    return r | fields


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def markdown_tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in `md`, as (header cells, rows of cells)."""
    lines, found = md.splitlines(), []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("| ") and lines[i + 1].startswith("|-"):
            rows = [[c.strip() for c in row.split("|")[1:-1]] for row in itertools.takewhile(
                lambda row: row.startswith("| "), lines[i + 2:])]
            found.append(([c.strip() for c in line.split("|")[1:-1]], rows))
    return found


def headers(md: str) -> list[str]:
    """The column names of every table in `md`, in order (a split table's leading columns once per part)."""
    return [h for header, _ in markdown_tables(md) for h in header]


def _record(md: str, label: str) -> dict[str, str]:
    """The row `label` of one setting's Markdown (its table split into parts or not), by column."""
    record: dict[str, str] = {}
    for header, rows in markdown_tables(md):
        record |= next((dict(zip(header, row)) for row in rows if row[0] == label), {})
    return record


def test_each_row_is_compared_with_its_own_oracle(tmp_path):
    """Two streams of seed 0 (scenario.stream_seed 1 and 2), each with its own oracle (forget_score 10 and 30):
    ga scores 12 and 22, differences +2 and −8 to its own oracles, so its gap is |(2 − 8)/2| = 3 (the gap of the
    means, 17 against Retrain's 20), not |17 − 10| = 7 against the first stream's oracle alone. Retrain holds both
    oracles, whether synthesized or run."""
    retrain, ga = sequence_rows(steps=(1,), seeds=(0,))
    rows = []
    for stream, oracle in ((1, 10.0), (2, 30.0)):
        fields = {"stream_seed": stream, "config": {"scenario": {"stream_seed": stream}}}
        rows += [_variant(retrain, oracle, oracle, run_id=f"retrain-{stream}", **fields),
                 _variant(ga, oracle - 8 if stream == 2 else oracle + 2, oracle, run_id=f"ga-{stream}", **fields)]
    for kept in (rows, [r for r in rows if r["method"] == "ga"]):  # real retrain runs, or the rows' references
        md = compare(_write(tmp_path / "streams.jsonl", kept))
        assert [_record(md, "retrain")[c] for c in ("n", "forget_score")] == ["2", "20.00 ± 14.14"]
        assert [_record(md, "ga")[c] for c in ("n", "forget_score")] == ["2", "17.00 ± 7.07 (3.00)"]
        assert _record(md, "ga")["Avg.Gap"] == "8.00 ± 2.12"  # Avg. Gap: (2 + 11) / 2 and (8 + 11) / 2
    csv = compare(str(tmp_path / "streams.jsonl"), fmt="csv")
    assert ",ga,2,17.0000,7.0711,63.5310,3.0000," in csv


def test_rows_without_an_oracle_have_no_retrain_row_and_no_gap(tmp_path):
    """A stream run with scenario.oracle=false: no reference oracle, so no Retrain row (not one of NaNs) and no
    gap to show."""
    rows = [r | {"reference": {"original": r["reference"]["original"], "oracle": {}}, "gap": {},
                 "avg_gap": float("nan"), "rte_relative": float("nan")}
            for r in sequence_rows(steps=(1,)) if r["method"] == "ga"]
    md = compare(_write(tmp_path / "free.jsonl", rows))
    ga = _record(md, "ga")
    assert "| retrain" not in md and (ga["n"], ga["Avg.Gap"]) == ("2", "—") and not any("(" in c for c in ga.values())


def test_a_configuration_run_twice_counts_once_the_latest_kept(tmp_path):
    """Seed 1 run again (a relaunched sweep, into another results_dir): its latest run is kept, by time where
    rows have one, else by order; a stale seed-0 row later in the file is older, so dropped. Runs that differ in
    lr, stream or eval.oracles are not collapsed."""
    ga0, ga1 = [r for r in sequence_rows(steps=(1,)) if r["method"] == "ga"]  # forget_score 12 and 14
    config = {"seed": 0, "results_dir": "a", "table_path": "a/t.jsonl", "method": {"lr": 0.01}, "eval": {"oracles": 1}}
    first = [_variant(ga0, 12, time="2026-01-01T00:00:00+00:00", config=config),
             _variant(ga1, 14, time="2026-01-02T00:00:00+00:00", config=config | {"seed": 1})]
    again = _variant(ga1, 16, run_id="ga1-again", time="2026-02-01T00:00:00+00:00",
                     config=config | {"seed": 1, "results_dir": "b", "table_path": "b/t.jsonl", "use_cache": False})
    stale = _variant(ga0, 100, run_id="ga0-stale", time="2025-01-01T00:00:00+00:00", config=config)
    md = compare(_write(tmp_path / "rerun.jsonl", [*first, again, stale]))
    assert [_record(md, "ga")[c] for c in ("n", "forget_score")] == ["2", "14.00 ± 2.83 (4.00)"]
    assert "\n2 duplicate rows (same configuration run again) collapsed; the latest kept.\n" in md
    untimed = [{k: v for k, v in r.items() if k != "time"} for r in (*first, again)]
    md = compare(_write(tmp_path / "untimed.jsonl", untimed))
    assert [_record(md, "ga")[c] for c in ("n", "forget_score")] == ["2", "14.00 ± 2.83 (4.00)"]
    assert "1 duplicate rows" in md
    other = [first[0],
             _variant(ga0, 13, run_id="lr", method_params={"lr": 0.02, "epochs": 2},
                      config=config | {"method": {"lr": 0.02}}),
             _variant(ga0, 15, run_id="stream", stream_seed=2, config=config | {"scenario": {"stream_seed": 2}}),
             _variant(ga0, 17, run_id="oracles", config=config | {"eval": {"oracles": 3}})]
    md = compare(_write(tmp_path / "different.jsonl", other))
    assert _record(md, "ga")["n"] == "4" and "collapsed" not in md
