"""Printed tables fit a terminal: the end-of-run summary of real rows (a relearn attack, a population, every
committed row: text-to-image prompt attacks, LM probes), `compare`'s Markdown and a stream's steps table keep
every line within the width, show each metric exactly once, attacked metrics in tables of their own, the most
read metrics first, and never '± 0.00' for a single run."""
from __future__ import annotations

import json

import pytest
from hydra.utils import get_class

from conftest import ROOT
from test_compare import _record, markdown_tables, sequence_rows
from unlearn.report.compare import compare, steps_table
from unlearn.report.row import HEADLINE_EXTRA, summary_sections, summary_table
from unlearn.report.tables import WIDTH, attack_of, fmt, render, split
from unlearn.results import load_rows

MODELS = ("Original", "Retrain (oracle)")
#: committed tables of every task kind, streams and populations (all of results/ takes compare ~20 s)
COMPARED = ("population_digits", "t2i_methods", "llm_methods", "sequence_sisa", "relearn_digits", "news", "restor")


def parsed(text: str, headings: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every Markdown table in the end-of-run text, as (the heading of its section among `headings` ('' for the
    first, which has none), header, rows): the parts of a split table carry the heading of their section."""
    found, heading, lines = [], "", text.splitlines()
    tables = iter(markdown_tables(text))
    for i, line in enumerate(lines[:-1]):
        heading = line if line in headings else heading
        if line.startswith("| ") and lines[i + 1].startswith("|-"):
            header, rows = next(tables)
            found.append((heading, header, rows))
    return found


def check_summary(row: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The end-of-run text of `row` fits WIDTH, and every metric of the method and its references is a column of
    exactly one table, each table with the original, the oracle (when the row has one) and the method as rows."""
    text = summary_table(row)
    assert max(map(len, text.splitlines())) <= WIDTH, text
    tables = parsed(text, [h for h, _ in summary_sections(row) if h])
    columns = [c for _, header, _ in tables for c in header[1:]]
    names = {*row["metrics"], *row["reference"]["original"], *row["reference"].get("oracle", {}), "Avg.Gap"}
    assert sorted(columns) == sorted(names)  # each exactly once
    labels = [*MODELS[: 2 if row["reference"].get("oracle") else 1], f"{row['method']} [{row['status']}]"]
    assert all([r[0] for r in rows] == labels for _, _, rows in tables)
    return tables


def test_fmt_and_split_on_known_answers():
    assert [fmt(v) for v in (12.3456, 0.0, 3e-5, -0.004, float("nan"), None, 7)] == \
        ["12.35", "0.00", "3.0e-05", "-4.0e-03", "nan", "", "7"]
    import pandas as pd

    frame = pd.DataFrame({"model": ["a", "bb"], **{f"metric_{i}": ["1.00", "22.00"] for i in range(12)}})
    parts = split(frame, ["model"], width=50)
    assert all(list(p.columns[:1]) == ["model"] for p in parts) and len(parts) > 1
    assert [c for p in parts for c in p.columns[1:]] == list(frame.columns[1:])  # each once, in order
    assert all(max(map(len, render(p).splitlines())) <= 50 for p in parts)
    assert len(split(frame, ["model"], width=1000)) == 1
    alone = split(frame.assign(**{"a_very_long_metric_name_" * 3: ["1", "2"]}), ["model"], width=50)[-1]
    assert list(alone.columns) == ["model", "a_very_long_metric_name_" * 3]  # too wide for any width: on its own


def test_end_of_run_tables_of_an_attacked_run_fit_and_show_each_metric_once(run_experiment):
    row = run_experiment("attack=relearn", "method=ga", "method.epochs=2")
    tables = check_summary(row)
    heading, header, _ = tables[0]
    # the most-read first: the Avg. Gap metrics, Avg. Gap and RTE, then the attack's own table(s)
    rte = [n for n in row["metrics"] if n.startswith("RTE")]
    assert not heading and header[1:] == ["UA", "RA", "TA", "MIA", "Avg.Gap", *rte]
    attacked = [(h, header) for h, header, _ in tables if any(attack_of(c) == "relearn" for c in header[1:])]
    assert attacked and all(h.startswith("attack=relearn") and all(attack_of(c) == "relearn" for c in header[1:])
                            for h, header in attacked)
    assert attacked[0][1][1:5] == ["relearn.UA", "relearn.RA", "relearn.TA", "relearn.MIA"]
    retrain = [r for _, _, rows in tables for r in rows if r[0] == "Retrain (oracle)"]
    assert any(fmt(row["reference"]["oracle"]["relearn.UA"]) in r for r in retrain)


def test_end_of_run_tables_of_a_population_show_the_references_figures(run_experiment):
    row = run_experiment("eval.oracles=3", "method=ft", "method.epochs=2")
    population = [n for n in row["metrics"] if n.startswith(("klom_", "lira_", "rmia", "eps_"))]
    assert population
    sections = dict(summary_sections(row))
    (heading,) = [h for h in sections if h.startswith("population")]
    assert sections[heading] == population and "over 3 originals" in heading
    check_summary(row)
    # Where the references carry the same figures (the original vs the oracles, independent retrains), their
    # rows show them: nothing between the row and the table drops them.
    marked = json.loads(json.dumps(row))
    for k, role in enumerate(("original", "oracle")):
        marked["reference"][role] |= {n: 1000.0 + k + i / 100 for i, n in enumerate(population)}
    tables = check_summary(marked)
    for k, label in enumerate(MODELS):
        cells = {c for _, _, rows in tables for r in rows if r[0] == label for c in r}
        assert {fmt(1000.0 + k + i / 100) for i in range(len(population))} <= cells


def test_end_of_run_tables_of_every_committed_kind_of_row_fit():
    """Every kind of row the harness has written (each task with each attack, with or without an oracle, with or
    without population figures; committed in results/): text-to-image prompt attacks, LM probes and
    quantization, streams, populations."""
    seen = set()
    for row in load_rows(str(ROOT / "results" / "*.jsonl")):
        kind = (row["task"], tuple(sorted({attack_of(n) for n in row["metrics"]} - {None})),
                bool(row["reference"].get("oracle")), "klom_forget" in row["metrics"], "step" in row)
        if kind in seen:
            continue
        seen.add(kind)
        headline = [c for heading, header, _ in check_summary(row) if not heading for c in header[1:]]
        # a row without an oracle (a stream run with scenario.oracle=false) leads with its task's gap metrics
        gapped = list(row["gap"]) or [n for n in get_class(row["config"]["data"]["task"]["_target_"]).gap_metrics
                                      if n in row["metrics"]]
        extra = [n for n in HEADLINE_EXTRA if n in row["metrics"] and n not in gapped]
        rte = [n for n in row["metrics"] if n.startswith("RTE")]
        assert headline == [*gapped, *extra, "Avg.Gap", *rte]
    assert len(seen) >= 15


def test_t2i_prompt_attacks_get_tables_of_their_own():
    row = next(r for r in load_rows(ROOT / "results" / "t2i_methods.jsonl") if "prompt.ASR" in r["metrics"])
    tables = check_summary(row)
    prompt = [header for heading, header, _ in tables if heading.startswith("attack=prompt")]
    # its gap metrics first, then the attack's own figures, then the rest of the task's metrics
    assert prompt[0][1:4] == ["prompt.UA", "prompt.IRA", "prompt.CRA"]
    ordered = [c for header in prompt for c in header[1:]]
    assert ordered.index("prompt.ASR") < ordered.index("prompt.UA_held_out")


def test_compare_and_steps_markdown_fit_and_show_one_value_for_one_run(tmp_path):
    for name in COMPARED:
        md = compare(ROOT / "results" / f"{name}.jsonl")
        long = [line for line in md.splitlines() if len(line) > WIDTH and not line.startswith("    python ")]
        assert not long, long[:3]  # only the commands that made the rows keep their length (to copy them)
        for block in md.split("\n### ")[1:]:
            tables = markdown_tables(block)
            columns = [c for header, _ in tables for c in header if c not in ("method", "n")]
            assert len(tables) > 1 and len(columns) == len(set(columns))
            assert all(header[:2] == ["method", "n"] for header, _ in tables)
    steps = steps_table(load_rows(ROOT / "results" / "sequence_sisa.jsonl"))
    assert max(map(len, steps.splitlines())) <= WIDTH
    assert all(header[:3] == ["method", "step", "n"] for header, _ in markdown_tables(steps))
    # one seed: the mean alone (its gap after it), never "± 0.00"; two seeds: the std, even when it is 0
    single = tmp_path / "single.jsonl"
    single.write_text("".join(json.dumps(r) + "\n" for r in sequence_rows(steps=(1,), seeds=(0,))))
    one = compare(single)
    assert _record(one, "ga")["forget_score"] == "12.00 (2.00)" and "± 0.00" not in one
    assert _record(one, "ga")["Avg.Gap"] == "6.50"
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps(r) + "\n" for r in sequence_rows(steps=(1,))))
    assert _record(compare(two), "ga")["utility"] == "79.00 ± 0.00 (11.00)"
    assert "± 0.00" not in steps_table(sequence_rows(steps=(1, 2), seeds=(0,)))


def test_html_given_a_bare_name_goes_beside_the_table(tmp_path, capsys, monkeypatch):
    from unlearn.__main__ import main

    table = tmp_path / "outputs" / "stream" / "table.jsonl"
    table.parent.mkdir(parents=True)
    table.write_text("".join(json.dumps(r) + "\n" for r in sequence_rows(steps=(1,))))
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(table), "--html", "r.html"]) == 0
    assert (table.parent / "r.html").is_file() and not (tmp_path / "r.html").exists()
    assert f"html: {table.parent / 'r.html'}" in capsys.readouterr().err
    assert main(["compare", str(table.parent), "--html", "sub/r.html"]) == 0  # a path is taken as given
    assert (tmp_path / "sub" / "r.html").is_file()
    # a glob: beside the folder before its first wildcard, plot and page alike
    assert main(["compare", str(tmp_path / "outputs" / "*" / "table.jsonl"), "--html", "g.html"]) == 0
    assert (tmp_path / "outputs" / "g.html").is_file() and (tmp_path / "outputs" / "compare.png").is_file()
