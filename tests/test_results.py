"""unlearn.results.load: one DataFrame row per result row, for every task kind and every kind of source; and the
HTML report built on it, opened in a real browser when one is installed."""
import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from conftest import ROOT
from test_compare import sequence_rows
from test_diffusion import ADAM, TINY_DIFFUSION
from test_llm import ADAMW, METHODS, TINY_LLM
from unlearn.errors import UnlearnError
from unlearn.report import html
from unlearn.results import load, load_rows
from unlearn.tasks.classification import ClassificationTask
from unlearn.tasks.diffusion import DiffusionTask
from unlearn.tasks.llm import LanguageModelTask

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                if shutil.which(b)), None)


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_load_flattens_rows_of_all_three_modalities(run_experiment, tmp_path):
    rows = [run_experiment("method=ga"),
            run_experiment(*TINY_LLM, *ADAMW, *METHODS["ga"], tiny=False),
            run_experiment(*TINY_DIFFUSION, "method=ga", *ADAM, tiny=False)]
    frame = load(tmp_path / "outputs" / "table.jsonl")
    assert frame["task"].tolist() == ["classification", "llm", "diffusion"]
    assert set(frame["experiment"]) == {"outputs"} and frame["step"].isna().all()
    for (_, flat), row, task in zip(frame.iterrows(), rows, (ClassificationTask, LanguageModelTask, DiffusionTask)):
        assert {m for m in frame.attrs["metrics"] if not np.isnan(flat[m])} == set(row["metrics"])
        assert frame.attrs["metrics_by_task"][row["task"]] == list(row["metrics"])
        assert all(same(flat[m], v) for m, v in row["metrics"].items())
        assert {c[4:] for c in frame if c.startswith("gap.") and not np.isnan(flat[c])} == set(task.gap_metrics)
        assert all(flat[f"gap.{m}"] == v for m, v in row["gap"].items())
        for ref in ("original", "oracle"):
            assert all(same(flat[f"ref_{ref}.{m}"], v) for m, v in row["reference"][ref].items())
        assert flat["avg_gap"] == row["avg_gap"] and flat["RTE_s"] > 0 and same(flat["rte_relative"], row["rte_relative"])
        assert (flat["method"], flat["seed"], flat["status"]) == ("ga", 0, "ok")
        assert flat["forget.builder"] == row["forget"]["builder"] and flat["forget.size"] == row["forget"]["size"]
        assert flat["method_params.lr"] == row["method_params"]["lr"] and flat["timings.original_s"] >= 0
        assert json.loads(flat["forget"])["builder"] == row["forget"]["builder"] and flat["config"]["seed"] == 0
    # The same rows from the run dirs (result.json) and through a glob.
    columns = ["run_id", "task", "method", "avg_gap", "gap.UA", "ref_oracle.forget_prob", "timings.original_s"]
    assert load(tmp_path / "run")[columns].sort_values("run_id").reset_index(drop=True).equals(
        frame[columns].sort_values("run_id").reset_index(drop=True))
    assert load(str(tmp_path / "**" / "*.jsonl"))["run_id"].tolist() == frame["run_id"].tolist()
    # The page shows one table and one trade-off plot per modality and embeds the diffusion run's generations.png,
    # decodable as a PNG.
    page = html.page("outputs", frame, "method", ())
    assert page.count("<table") == 3
    images = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert len(images) == 3 + 1 and all(image.startswith(b"\x89PNG") for image in images)
    assert (Path(rows[2]["run_dir"]) / "generations.png").read_bytes() in images


def test_committed_results_load_as_one_frame():
    frame = load(str(ROOT / "results" / "*.jsonl"))
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "results").glob("*.jsonl"))
    assert len(frame) == lines
    assert set(frame["experiment"]) == {p.stem for p in (ROOT / "results").glob("*.jsonl")}
    assert set(frame["task"]) == {"classification", "llm", "diffusion", "t2i"}
    # Every row is compared with its oracle, except streams run without one (scenario.oracle=false).
    oracle_free = frame["experiment"].isin({p.stem for p in (ROOT / "results").glob("*.jsonl")
                                            if all(row["config"].get("scenario", {}).get("oracle") is False
                                                   for row in load_rows(p))})
    assert oracle_free.any() and frame.loc[oracle_free, "ref_oracle.RTE_s"].isna().all()
    with_oracle = frame[~oracle_free]
    # Every row has an Avg. Gap, but where the task defines none: known_facts reads against the base model.
    gapless = with_oracle["data"] == "known_facts"
    assert gapless.any() and with_oracle.loc[gapless, "avg_gap"].isna().all()
    assert with_oracle.loc[~gapless, "avg_gap"].notna().all() and with_oracle["ref_oracle.RTE_s"].notna().all()
    assert frame["RTE_s"].notna().all()
    with pytest.raises(UnlearnError, match="no results at"):
        load(str(ROOT / "results" / "*.nothing"))


@pytest.mark.skipif(BROWSER is None, reason="no chromium or chrome installed")
def test_html_report_opens_in_a_headless_browser(tmp_path):
    """A diffusion table with its generations beside it, plus a sequence: a real browser renders the tables, the
    plots and the pictures from the one file."""
    shutil.copy(ROOT / "results" / "diffusion_digits_generations.png", tmp_path)
    with open(tmp_path / "diffusion_digits.jsonl", "w") as f:
        f.write((ROOT / "results" / "diffusion_digits.jsonl").read_text())
        f.writelines(json.dumps(row) + "\n" for row in sequence_rows())
    (page,) = html.write(load(tmp_path / "diffusion_digits.jsonl"), tmp_path / "report.html", "method", ["fd"])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,5000"]
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    # tables: the diffusion setting and each of the stream's 3 steps; images: a trade-off plot for the diffusion
    # setting and one for the stream (at its last step), the per-step curves, the generations beside the table
    assert dom.count("<table") == 4 and dom.count("<img") == 4 and "Per-step curves" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    pixels = (imread(shot)[..., :3] * 255).round()
    # matplotlib's first colour (#1f77b4) is nowhere in the page's own style: seeing it means the plots rendered.
    blue = np.abs(pixels - [31, 119, 180]).max(axis=-1) < 12
    assert blue.sum() > 500
