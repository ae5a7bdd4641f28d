"""`compare --html`: one self-contained page per experiment, for a person to read.

A page holds, per setting (task, data, model, forget request, and scenario and step where rows have them): a
short heading with the full setting folded in a <details>, compare's table (in a box that scrolls sideways on
its own, so the page never does), the forgetting–utility plot, the attacked metrics (`<attack>.<metric>`) and
the population metrics (eval.oracles=N) in sections of their own with the original and the oracle beside the
methods, the commands that made the rows, and the pictures runs left behind: `generations.png` in a run dir
(diffusion runs write one: original, oracle and unlearned model from the same noise), one per method, or
`<table>_generations.png` beside a table file (how results/ keeps them). Per-step curves when rows have a
`step`, and a glossary of the metrics the page shows. Every image is embedded as base64, so the page can be
mailed or archived alone.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from unlearn.report import plots
from unlearn.report.compare import LEGEND, cells, metric_groups, reference_view, setting_keys, short_title, tables
from unlearn.report.summary import Table
from unlearn.report.tables import GLOSSARY, attack_of, base_name

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1.5em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 2.2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 1.4em 0 .3em; }
h1, h2, h3, p, figcaption, summary, dd { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
table.results { border-collapse: collapse; font: 12px/1.4 ui-monospace, monospace; margin: .4em 0; }
table.results th, table.results td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left;
  white-space: nowrap; }
table.results thead th { background: #f3f3f3; position: sticky; top: 0; }
table.results td:first-child, table.results th:first-child { position: sticky; left: 0; background: #fff; }
table.results thead th:first-child { background: #f3f3f3; }
table.results tr.reference td { background: #fbf7e6; }
img { max-width: 100%; height: auto; border: 1px solid #eee; } figure { margin: 1em 0; }
figcaption, .meta, .note, summary { color: #666; font-size: .9em; }
pre { background: #f7f7f7; padding: .6em; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
details { margin: .3em 0; } summary { cursor: pointer; }
nav ol { columns: 2; font-size: .92em; } dl.glossary dt { font-weight: 600; margin-top: .5em; }
dl.glossary dd { margin-left: 1.5em; } .unit { color: #666; font-weight: normal; }
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _png(draw, found) -> bytes:
    buffer = io.BytesIO()
    draw(found, buffer)
    return buffer.getvalue()


def _run_pictures(members: pd.DataFrame) -> list[tuple[str, Path]]:
    """(caption, path) of the first generations.png per method among these rows."""
    found: dict[str, tuple[str, Path]] = {}
    for row in members.itertuples(index=False):
        if Path(row.source).name == "result.json":  # read from the run dir itself: wherever it is now
            run_dir = Path(row.source).parent
        elif isinstance(getattr(row, "run_dir", None), str):
            run_dir = Path(row.run_dir)
        else:
            continue
        if (run_dir / "generations.png").is_file():
            found.setdefault(row.method, (f"{row.method}, seed {row.seed}: {run_dir}", run_dir / "generations.png"))
    return list(found.values())


def _figure_tag(caption: str, path: Path) -> str:
    return f"<figure>{_img(path.read_bytes(), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(view: pd.DataFrame, references: Sequence[str] = ()) -> str:
    """A table of strings in its own sideways-scrolling box; rows labelled `references` shaded."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in view)
    body = "".join(
        f'<tr{" class=reference" if str(row.iloc[0]) in references else ""}>'
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for _, row in view.iterrows())
    return f'<div class="scroll"><table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _setting_details(setting: dict) -> str:
    """The full setting (the forget request as indented JSON), folded."""
    shown = {}
    for key, value in setting.items():
        if key == "forget" and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        shown[key] = None if not isinstance(value, (dict, list)) and pd.isna(value) else value
    text = json.dumps(shown, indent=2, default=str)
    return f"<details><summary>setting in full</summary><pre>{html.escape(text)}</pre></details>"


def glossary(names: Sequence[str], tasks: Sequence[str]) -> str:
    """A <dl> of the GLOSSARY entries for `names` (the metrics a page shows, attacked ones read as their base
    metric) in the page's `tasks`, each with the names it covers and its unit; '' for none."""
    entries: dict[int, list[str]] = {}
    for name in dict.fromkeys(names):
        for task in tasks:  # a name can mean another thing in another task (UA of a classifier, of a generator)
            i = next((i for i, entry in enumerate(GLOSSARY) if entry.matches(name, task)), None)
            if i is not None and base_name(name) not in entries.get(i, []):
                entries.setdefault(i, []).append(base_name(name))
    parts = []
    for i, covered in sorted(entries.items()):
        entry = GLOSSARY[i]
        scope = f" ({', '.join(entry.tasks)})" if entry.tasks else ""
        unit = f' <span class="unit">[{html.escape(entry.unit)}]</span>' if entry.unit else ""
        parts.append(f"<dt>{html.escape(', '.join(dict.fromkeys(covered)))}{unit}</dt>"
                     f"<dd>{html.escape(entry.meaning + scope)}</dd>")
    attacks = list(dict.fromkeys(a for a in map(attack_of, names) if a))
    if attacks:
        parts.append(f"<dt>{html.escape(', '.join(f'{a}.<metric>' for a in attacks))}</dt><dd>the metric of each model "
                     "after that attack (attack=...), run the same way on the original, the oracle and the unlearned "
                     "model</dd>")
    return f'<dl class="glossary">{"".join(parts)}</dl>' if parts else ""


def _section(index: int, table: Table, members: pd.DataFrame, metrics: Sequence[str], by: str,
             plot: bool) -> tuple[str, list[str]]:
    """One setting's part of the page, and the metric names it shows."""
    groups = metric_groups(members, metrics)
    parts = [f'<section id="setting-{index}"><h2>{html.escape(short_title(table.setting))}</h2>',
             _setting_details(table.setting), _table(cells(table), ("retrain",))]
    if table.note:
        parts.append(f'<p class="note">{html.escape(table.note)}</p>')
    if plot:
        parts += ["<figure>" + _img(_png(plots.tradeoff, [table]), f"trade-off plot: {short_title(table.setting)}")
                  + "<figcaption>Left: forgetting against utility; right: Avg. Gap to Retrain against run time "
                    "(log scale). Error bars: std over runs.</figcaption></figure>"]
    shown = [*table.metrics, "Avg.Gap", "RTE_s"]
    for key, heading, note in (
            ("attack", "Attacks", "Each model after the attack (the same attack on each); original and retrain are "
                                  "the run's own references."),
            ("population", "Population", "Figures over eval.oracles=N originals, oracles and unlearned models; the "
                                         "original and retrain rows give the same figures for the references.")):
        if groups[key]:
            parts += [f"<h3>{heading}</h3>", f'<p class="note">{html.escape(note)}</p>',
                      _table(reference_view(members, groups[key], by), ("original", "retrain"))]
            shown += groups[key]
    if table.commands:
        parts.append(f"<details><summary>made by {len(table.commands)} command(s)</summary><pre>"
                     + html.escape("\n".join(table.commands)) + "</pre></details>")
    parts += [_figure_tag(caption, path) for caption, path in _run_pictures(members)]
    return "\n".join(parts) + "</section>", shown


def page(name: str, frame: pd.DataFrame, by: str, extra: Sequence[str]) -> str:
    found = tables(frame, by, extra)
    keys = setting_keys(frame)
    sources = sorted(set(frame["source"]))
    # A stream's trade-off is drawn once, at its last step (as `plots.tradeoff` does for all of them).
    last = {id(t) for t in {tuple((k, v) for k, v in t.setting.items() if k != "step"): t for t in found}.values()}
    parts = [f"<h1>{html.escape(name)}</h1>",
             f'<p class="meta">{len(frame)} result rows in {len(found)} settings, from '
             f'{html.escape(", ".join(sources[:3]))}{f" and {len(sources) - 3} more files" if len(sources) > 3 else ""}.'
             f' Each setting is its own table: rows of different settings are never mixed. {html.escape(LEGEND)} '
             f'Metrics are explained <a href="#glossary">at the end</a>.</p>']
    if len(found) > 1:
        parts.append("<nav><ol>" + "".join(f'<li><a href="#setting-{i}">{html.escape(short_title(t.setting))}</a></li>'
                                           for i, t in enumerate(found)) + "</ol></nav>")
    if "step" in keys:
        parts += ["<h2>Per-step curves</h2>", _img(_png(plots.steps, found), "per-step curves")]
    if plots.has_trajectories(frame):
        parts += ["<h2>Unlearning trajectories</h2>",
                  '<p class="note">Each recorded metric against the step (or epoch) of the method\'s loop '
                  "(method.eval_every), on a fixed subset of each split; mean over runs with a ± std band; the dashed "
                  "line is the oracle's level on the same subset.</p>", _img(_png(plots.trajectories, frame),
                                                                             "unlearning trajectories")]
    shown: list[str] = []
    for i, (table, (_, members)) in enumerate(zip(found, frame.groupby(keys, sort=False, dropna=False))):
        section, names = _section(i, table, members, frame.attrs["metrics"], by, id(table) in last)
        parts.append(section)
        shown += names
    beside = [path for path in (Path(p).with_name(f"{Path(p).stem}_generations.png") for p in sources) if path.is_file()]
    parts += [_figure_tag(f"{path.name} (beside the table)", path) for path in beside]
    parts += ['<h2 id="glossary">Metrics on this page</h2>', glossary(shown, sorted(set(frame["task"])))]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>unlearn · {html.escape(name)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write(frame: pd.DataFrame, path: Path, by: str, extra: Sequence[str]) -> list[Path]:
    """One page per experiment of `frame`: `path` itself for one, `<stem>-<experiment>.html` for several."""
    experiments = list(dict.fromkeys(frame["experiment"]))
    written = []
    for name in experiments:
        target = path if len(experiments) == 1 else path.with_name(f"{path.stem}-{name}{path.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page(name, frame[frame["experiment"] == name], by, extra), encoding="utf-8")
        written.append(target)
    return written
