"""`python -m unlearn leaderboard`: the rank rule on rows whose answer is known, the reference lines, robustness
columns only where attacks ran, a stream ranked at its last step, bad input, and the page in a real browser."""
from __future__ import annotations

import json
import re
import subprocess
from html import unescape

import numpy as np
import pytest
from scipy.stats import t

from conftest import ROOT
from test_compare import sequence_rows
from test_report_html import measure
from test_results import BROWSER
from unlearn import leaderboard
from unlearn.__main__ import main as cli
from unlearn.leaderboard import render
from unlearn.leaderboard.board import ORIGINAL, RETRAIN, boards
from unlearn.results import from_rows, load

#: per-seed Avg. Gaps of five methods. With 3 seeds the 95% t half-width is t(0.975, 2)·std/√3 ≈ 2.48·std:
#: a [0.75, 1.25]; b [0.95, 1.45] overlaps a → rank 1; c [1.35, 1.85] misses a but overlaps b → rank 2 (b's place:
#: a rank is never passed along a chain of overlaps); e [−1.73, 5.73] is 4th by mean but overlaps a → rank 1;
#: d has one seed (no interval) and overlaps nothing → its own place, 5.
GAPS = {"a": [1.0, 1.1, 0.9], "b": [1.2, 1.3, 1.1], "c": [1.6, 1.7, 1.5], "e": [0.5, 3.5, 2.0], "d": [9.0]}
EXPECTED = {"a": (1, 1), "b": (2, 1), "c": (3, 2), "e": (4, 1), "d": (5, 5)}  # method: (place, rank)
ORACLE_UA, ORIGINAL_UA = 10.0, 0.0


def row(method: str, seed: int, gap: float, *, data: str = "digits", attack: dict | None = None,
        attacked_gap: float | None = None, params: dict | None = None, status: str = "ok", run: str = "") -> dict:
    """A hand-built result row (the schema of unlearn/report/row.py) with one gap metric, UA: the oracle scores
    ORACLE_UA, the original ORIGINAL_UA (so the Original's Avg. Gap is 10), the method ORACLE_UA + `gap`. With
    `attack` ({"name": ..., settings}), the attacked figures: the oracle's relearned UA is 20, the original's 14,
    the method's 20 + `attacked_gap`."""
    ua = ORACLE_UA + gap if status == "ok" else float("nan")
    metrics = {"UA": ua, "RTE_s": 2.0}
    oracle, original = {"UA": ORACLE_UA, "RTE_s": 8.0}, {"UA": ORIGINAL_UA, "RTE_s": float("nan")}
    config = {}
    if attack:
        name = attack["name"]
        metrics[f"{name}.UA"], oracle[f"{name}.UA"], original[f"{name}.UA"] = 20.0 + attacked_gap, 20.0, 14.0
        metrics[f"{name}.cost_s"] = oracle[f"{name}.cost_s"] = 99.0  # bookkeeping: never part of the figure
        settings = {k: v for k, v in attack.items() if k != "name"}
        config = {"attack": {"_target_": f"unlearn.attacks.{name}.X"} | settings}
    return {"schema": 1, "run_id": f"{method}-{seed}-{data}-{run}", "task": "classification", "data": data,
            "model": "cnn_small", "forget": {"builder": "random", "ratio": 0.1, "count": None, "size": 10},
            "method": method, "method_params": params or {}, "seed": seed, "status": status, "metrics": metrics,
            "gap": {"UA": abs(ua - ORACLE_UA)}, "avg_gap": abs(ua - ORACLE_UA), "rte_relative": 0.25,
            "reference": {"original": original, "oracle": oracle}, "command": "hand-built", "config": config}


def known_rows() -> list[dict]:
    """GAPS on digits, plus a second run of a's seed 0 under a relearn attack (same Avg. Gap: a seed, not a new
    one) and b's three seeds under relearn; mnist: a and b without any attack."""
    rows = [row(m, seed, gap) for m, gaps in GAPS.items() for seed, gap in enumerate(gaps)]
    rows.append(row("a", 0, GAPS["a"][0], attack={"name": "relearn"}, attacked_gap=3.0, run="attacked"))
    rows += [row("b", seed, gap, attack={"name": "relearn"}, attacked_gap=1.0 + seed, run="attacked")
             for seed, gap in enumerate(GAPS["b"])]
    rows += [row(m, seed, gap, data="mnist") for m in ("a", "b") for seed, gap in enumerate(GAPS[m])]
    return rows


def frame(rows: list[dict]):
    return from_rows(rows).assign(source="known.jsonl", experiment="known")


def write(rows: list[dict], path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ranks_follow_the_overlap_rule_on_known_gaps():
    (digits, mnist), unranked = boards(frame(known_rows()))
    assert not unranked and digits.setting["data"] == "digits"
    e = digits.entries
    methods = e[e["kind"] == "method"]
    assert {m: (int(r["place"]), int(r["rank"])) for m, r in methods.iterrows()} == EXPECTED
    assert list(methods.index) == ["a", "b", "e", "c", "d"]  # by (rank, mean)
    half = t.ppf(0.975, 2) * np.std(GAPS["a"], ddof=1) / np.sqrt(3)
    assert methods.loc["a", "mean"] == pytest.approx(1.0) and methods.loc["a", "half"] == pytest.approx(half)
    assert methods.loc["a", ["low", "high"]].tolist() == pytest.approx([1.0 - half, 1.0 + half])
    # a's attacked run repeats seed 0: three seeds, four runs; one seed has no interval at all
    assert methods.loc["a", ["n", "runs"]].tolist() == [3, 4]
    assert methods.loc["d", "n"] == 1 and np.isnan(methods.loc["d", "half"])
    assert methods.loc["d", "low"] == methods.loc["d", "high"] == 9.0
    table = render.cells(digits).set_index("method")
    assert table.loc["a", "Avg.Gap"] == f"1.00 ± {half:.2f}" and table.loc["d", "Avg.Gap"] == "9.00"
    assert table.loc["c", "rank"] == "2" and table.loc["e", "rank"] == "1"
    assert mnist.entries.loc[["a", "b"], "rank"].tolist() == [1, 1]


def test_original_and_retrain_are_always_shown_and_never_ranked():
    (digits, mnist), _ = boards(frame(known_rows()))
    for board in (digits, mnist):
        e = board.entries
        assert list(e.index[:2]) == [RETRAIN, ORIGINAL] and (e.loc[[RETRAIN, ORIGINAL], "kind"] == "reference").all()
        assert e.loc[[RETRAIN, ORIGINAL], "rank"].isna().all()
        assert e.loc[RETRAIN, "mean"] == 0 and e.loc[RETRAIN, "rte_s"] == 8.0  # the oracle's training time
        assert e.loc[ORIGINAL, "mean"] == pytest.approx(ORACLE_UA - ORIGINAL_UA)
        lines = render.cells(board)
        assert lines["method"].tolist()[:2] == [RETRAIN, ORIGINAL] and lines["rank"].tolist()[:2] == ["ref", "ref"]
    # rows that carry no reference at all: the lines are still there, with nothing to show
    bare = [r | {"reference": {}} for r in known_rows() if r["data"] == "mnist"]
    (board,), _ = boards(frame(bare))
    shown = render.cells(board).set_index("method")
    assert shown.loc[RETRAIN, "Avg.Gap"] == shown.loc[ORIGINAL, "Avg.Gap"] == "—"


def test_robustness_columns_appear_only_where_attacks_ran():
    rows = known_rows()
    # two quantize configurations on c: one column each, labelled by what differs
    rows += [row("c", seed, gap, attack={"name": "quantize", "bits": bits, "scheme": "symmetric"}, attacked_gap=0.5,
                 run=f"q{bits}") for bits in (4, 8) for seed, gap in enumerate(GAPS["c"])]
    (digits, mnist), _ = boards(frame(rows))
    assert digits.attacks == ["relearn", "quantize bits=4", "quantize bits=8"] and mnist.attacks == []
    mean = digits.robust_mean
    assert mean.loc["a", "relearn"] == 3.0 and mean.loc["b", "relearn"] == pytest.approx(2.0)  # mean of 1, 2, 3
    assert mean.loc[ORIGINAL, "relearn"] == 6.0 and mean.loc[RETRAIN, "relearn"] == 0.0
    assert np.isnan(mean.loc["d", "relearn"]) and mean.loc["c", "quantize bits=4"] == 0.5  # cost_s left out
    assert digits.robust_n.loc["a", "relearn"] == 1 and np.isnan(digits.robust_half.loc["a", "relearn"])
    md = render.markdown([digits, mnist])
    digits_md, mnist_md = md.split("### ")[1:]
    assert "after relearn" in digits_md and "after quantize bits=8" in digits_md and "after" not in mnist_md
    assert "| —" in digits_md  # d never ran under relearn


def test_a_stream_is_ranked_at_its_last_step():
    # sequence_rows: at step 3 ga's Avg. Gap is (2 + 13) / 2 and (4 + 13) / 2 for its two seeds
    (board,), _ = boards(frame(sequence_rows()))
    assert board.setting["step"] == 3
    assert board.entries.loc["ga", ["mean", "n", "rank"]].tolist() == [8.0, 2, 1]
    assert "Ranked at step 3, the stream's last." in render.note(board)


def test_sweeps_are_told_apart_and_diverged_runs_counted():
    rows = [row("ga", seed, 1.0 + seed, params={"lr": lr, "epochs": 5}) for lr in (0.1, 0.01) for seed in range(2)]
    rows.append(row("ga", 2, 0.0, params={"lr": 0.1, "epochs": 5}, status="diverged"))
    (board,), _ = boards(frame(rows))
    e = board.entries
    assert {"ga (lr=0.1)", "ga (lr=0.01)"} <= set(e.index)
    assert e.loc["ga (lr=0.1)", ["n", "runs", "diverged"]].tolist() == [2, 3, 1]
    assert "diverged" in render.cells(board)


def test_tuning_trials_are_not_ranked():
    """A trial is the method on a validation request (docs/tuning.md): a search step, not a result to rank."""
    rows = [row("ga", seed, 1.0) for seed in range(2)]
    rows += [row("ga", 100, 0.1, params={"lr": 0.5}) | {"trial": {"request": "validation", "select": "last"}}]
    (board,), _ = boards(frame(rows))
    assert "ga" in board.entries.index and not any("lr=0.5" in label for label in board.entries.index)
    assert board.entries.loc["ga", "runs"] == 2


def test_real_rows_rank_gradient_ascent_last_on_mnist():
    (board,), _ = boards(load(ROOT / "results" / "mnist.jsonl"))
    methods = board.entries[board.entries["kind"] == "method"]
    assert methods.index[-1] == "ga" and methods.loc["ga", "rank"] > 1 and methods["rank"].min() == 1
    assert set(methods.index) == {"ft", "ga", "rl", "salun", "l1_sparse"} and (methods["n"] == 3).all()
    assert board.entries.loc[ORIGINAL, "mean"] > 0 and board.entries.loc[RETRAIN, "rte_s"] > 0


def test_cli_writes_the_board_and_refuses_bad_input(tmp_path, capsys):
    rows = write(known_rows(), tmp_path / "known.jsonl")
    out, page = tmp_path / "board.md", tmp_path / "board.html"
    assert cli(["leaderboard", str(rows), "--out", str(out), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text and f"python -m unlearn leaderboard {rows} --out {out} --html {page}" in text
    assert text.count("### classification") == 2 and page.read_text().count('<section id="board-') == 2
    assert leaderboard.main([str(rows), "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("task,data,model,forget,scenario,rank,method") and len(csv) == 1 + 7 + 4

    empty = tmp_path / "empty"
    empty.mkdir()
    unscored = write([r | {"avg_gap": None, "gap": {}} for r in known_rows()], tmp_path / "unscored.jsonl")
    for bad in (empty, tmp_path / "missing.jsonl", unscored):
        target, html = tmp_path / "bad.md", tmp_path / "bad.html"
        assert leaderboard.main([str(bad), "--out", str(target), "--html", str(html)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and not target.exists() and not html.exists()
    assert "Avg. Gap" in err or "avg_gap" in err  # the last one: rows, but none with an Avg. Gap


def test_page_has_a_section_per_setting_contents_and_shaded_references():
    (digits, mnist), _ = boards(frame(known_rows()))
    unranked = [({"task": "classification", "data": "digits", "model": "vit_tiny", "forget": "{}"}, 4)]
    page = render.page([digits, mnist], unranked, command="python -m unlearn leaderboard x")
    assert len(re.findall(r'<section id="board-\d">', page)) == 2
    assert page.count('<li><a href="#board-') == 2 and 'href="#unranked"' in page
    assert page.count("<tr class=reference>") == 2 * 2 and page.count("<img") == 2
    assert "after relearn" in page and "Made by <code>python -m unlearn leaderboard x</code>" in page
    glossary = page[page.index('id="glossary"'):]
    assert "Avg.Gap" in glossary and "UA" in glossary and "relearn.&lt;metric&gt;" in glossary


@pytest.mark.skipif(BROWSER is None, reason="no chromium or chrome installed")
def test_page_opens_in_a_headless_browser(tmp_path):
    """The page a real browser renders: every board's table, every image loaded, nothing wider than 1400 px."""
    page = tmp_path / "board.html"
    assert leaderboard.main([str(write(known_rows(), tmp_path / "known.jsonl")), "--html", str(page)]) == 0
    measured = measure(page, tmp_path)
    assert measured["scrollWidth"] <= 1400
    assert len(measured["images"]) == 2 and all(width > 0 for width in measured["images"])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = unescape(subprocess.run([BROWSER, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                                  timeout=120).stdout)
    assert dom.count("<table") == 2 and dom.count(f"<td>{RETRAIN}</td>") == 2 and "after relearn" in dom
