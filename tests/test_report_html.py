"""The HTML report as a person reads it: several settings (an attack, a population, an LM, a stream) on one page
that never scrolls sideways at 1400 px (tables scroll in their own box), whose images all load, with short
headings (the full setting folded), the attack and population sections, a glossary of the metrics shown, and
legible log-scale run-time axes."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape

import matplotlib.pyplot as plt
import pytest

from conftest import ROOT
from test_compare import sequence_rows
from test_results import BROWSER
from unlearn.report import html, plots
from unlearn.report.compare import cells, tables
from unlearn.results import from_rows, load, load_rows

#: appended to a copy of a page: after it has loaded, the page writes what it measures into itself (as JSON)
PROBE = """<script>window.addEventListener("load", () => {
  const found = document.createElement("pre");
  found.id = "measured";
  found.textContent = JSON.stringify({scrollWidth: document.documentElement.scrollWidth,
    images: [...document.images].map(image => image.complete ? image.naturalWidth : -1)});
  document.body.append(found);
});</script>"""


def measure(page, tmp_path, width: int = 1400) -> dict:
    """What headless Chromium measures of `page` at `width` px: the document's scrollWidth and each image's
    naturalWidth (0: it did not load)."""
    probe = tmp_path / f"measured-{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},3000",
             "--virtual-time-budget=10000"]
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    return json.loads(unescape(re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S).group(1)))


@pytest.fixture
def several_settings(tmp_path):
    """One experiment with several settings, from committed rows: a relearn attack on digits (with a population
    run beside it), class-wise forgetting, an LM, and a hand-built stream; the diffusion picture beside it."""
    rows = [r for name in ("relearn_digits", "population_digits", "llm_methods")
            for r in load_rows(ROOT / "results" / f"{name}.jsonl")] + sequence_rows()
    path = tmp_path / "several.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("source", "experiment")}) + "\n"
                            for r in rows))
    shutil.copy(ROOT / "results" / "diffusion_digits_generations.png", tmp_path / "several_generations.png")
    return path


def test_page_reads_as_sections_with_short_headings_a_glossary_and_no_lone_std(several_settings, tmp_path):
    frame = load(several_settings)
    found = tables(frame, "method", ("kl_forget", "klom_forget"))
    page = html.page("several", frame, "method", ("kl_forget", "klom_forget"))
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert len(re.findall(r'<section id="setting-\d+">', page)) == len(found) >= 5
    assert all(len(h) <= 120 and "{" not in h for h in headings)  # the full setting is folded, not the heading
    assert page.count("<summary>setting in full</summary>") == len(found)
    assert page.count('<div class="scroll"><table') == page.count("<table")
    # the attack section: relearn's figures with the original and retrain beside the methods
    attack = page[page.index("<h3>Attacks</h3>"):]
    attack = attack[: attack.index("</table>")]
    assert "relearn.UA" in attack and ">original</td>" in attack and ">retrain</td>" in attack
    population = page[page.index("<h3>Population</h3>"):]
    assert "klom_forget" in population[: population.index("</table>")]
    # the glossary explains what the page shows, and only that
    glossary = page[page.index('id="glossary"'):]
    for shown in ("UA", "MIA", "Avg.Gap", "forget_prob", "klom_forget", "relearn.&lt;metric&gt;"):
        assert shown in glossary, shown
    assert "ASR" not in glossary and "privleak" not in glossary
    # a metric with one value shows the mean alone (here and in compare's Markdown): KLoM comes from the one
    # population run per method, beside three relearn runs without it
    (digits,) = [t for t in found if "klom_forget" in t.metrics]
    klom = cells(digits)["klom_forget"]
    assert (digits.summary["n"] > 1).all() and klom.str.fullmatch(r"[\d.]+|—").all() and (klom != "—").sum() >= 3
    drawn = len(found) - 2  # a trade-off plot per setting, a stream's at its last step only (steps 1 and 2 are not)
    assert page.count("<img") == drawn + 1 + 1  # and the per-step curves, and the picture beside the table


@pytest.mark.skipif(BROWSER is None, reason="no chromium or chrome installed")
def test_page_of_several_settings_fits_1400_px_and_every_image_loads(several_settings, tmp_path):
    (page,) = html.write(load(several_settings), tmp_path / "report.html", "method", ("kl_forget", "klom_forget"))
    measured = measure(page, tmp_path)
    assert measured["scrollWidth"] <= 1400
    assert len(measured["images"]) == page.read_text().count("<img") and all(w > 0 for w in measured["images"])


def overlapping_labels(fig) -> list[tuple[str, str]]:
    """Pairs of neighbouring x tick labels (inside the view) whose drawn boxes overlap, over every panel."""
    fig.canvas.draw()
    renderer, found = fig.canvas.get_renderer(), []
    for ax in fig.axes:
        low, high = sorted(ax.get_xlim())
        shown = [(t.get_window_extent(renderer), t.get_text()) for x, t in zip(ax.get_xticks(), ax.get_xticklabels())
                 if low <= x <= high and t.get_text()]
        found += [(a, b) for (box_a, a), (box_b, b) in zip(shown, shown[1:]) if box_a.x1 > box_b.x0]
    return found


@pytest.mark.parametrize("seconds", [(0.002, 0.5, 30.0, 900.0), (2.2, 14.0, 84.0), (0.17, 0.8, 5.7), (3.0, 3.2)])
def test_run_time_axis_labels_never_overlap(seconds):
    """A method per run time (a span of 0.02 to 6 decades): every labelled tick of the log RTE axis is legible."""
    ga = next(r for r in sequence_rows(steps=(1,), seeds=(0,)) if r["method"] == "ga")
    rows = [json.loads(json.dumps(ga)) | {"method": f"m{i}", "run_id": f"m{i}"} for i in range(len(seconds))]
    for row, s in zip(rows, seconds):
        row["metrics"]["RTE_s"] = s
    frame = from_rows([{k: v for k, v in r.items() if k != "step"} for r in rows])
    fig = plots.tradeoff_figure(tables(frame.assign(source="rows", experiment="x")))
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert labels and not overlapping_labels(fig), labels
    plt.close(fig)


def test_short_titles_name_the_request_in_a_few_words():
    from unlearn.report.compare import forget_label, short_title

    assert forget_label('{"builder": "random", "count": null, "ratio": 0.1}') == "random ratio=0.1"
    long = json.dumps({"builder": "from_file", "path": "/a/long/path/" + "x" * 80 + ".json", "a": 1, "b": 2, "c": 3})
    assert len(forget_label(long)) < 80 and forget_label(long).endswith("…")
    setting = {"task": "t2i", "data": "shapes_t2i", "model": "t2i_tiny",
               "forget": '{"builder": "concept", "concept": "circle"}', "scenario": "sequence", "step": 2}
    assert short_title(setting) == ("t2i · shapes_t2i · t2i_tiny · forget=concept concept=circle · scenario=sequence"
                                    " · step=2")


def test_glossary_explains_a_name_as_each_task_on_the_page_means_it():
    both = html.glossary(["UA", "relearn.UA", "Avg.Gap"], ["classification", "t2i"])
    assert "100 − accuracy on the forget set" in both and "target-prompt generations" in both
    assert "relearn.&lt;metric&gt;" in both and "Avg.Gap" in both
    one = html.glossary(["UA"], ["classification"])
    assert "target-prompt" not in one and one.count("<dt>") == 1
    assert html.glossary(["a_metric_nobody_defined"], ["classification"]) == ""
