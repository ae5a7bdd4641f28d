"""`compare --html`: one self-contained page per experiment, to look at rather than read.

A page holds compare's tables, the forgetting–utility plot, per-step curves when rows have a `step`, and the
pictures runs left behind: `generations.png` in a run dir (diffusion runs write one: original, oracle and
unlearned model from the same noise), one per method and setting, or `<table>_generations.png` beside a table
file (how results/ keeps them). Every image is embedded as base64, so the page can be mailed or archived alone.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import pandas as pd

from unlearn.report import plots
from unlearn.report.compare import LEGEND, setting_keys, tables

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.results { border-collapse: collapse; font: 12px ui-monospace, monospace; margin: .5em 0; }
table.results th, table.results td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
table.results thead th { background: #f3f3f3; }
table.results tbody tr:first-child { background: #fbf7e6; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; } figcaption { color: #666; font-size: .9em; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: 12px; } .meta { color: #666; }
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


def page(name: str, frame: pd.DataFrame, by: str, extra: Sequence[str]) -> str:
    found = tables(frame, by, extra)
    keys = setting_keys(frame)
    sources = sorted(set(frame["source"]))
    parts = [f"<h1>{html.escape(name)}</h1>",
             f'<p class="meta">{len(frame)} result rows from {html.escape(", ".join(sources[:3]))}'
             f'{f" and {len(sources) - 3} more files" if len(sources) > 3 else ""}. {html.escape(LEGEND)}</p>',
             "<h2>Forgetting–utility trade-off</h2>", _img(_png(plots.tradeoff, found), "trade-off plot")]
    if "step" in keys:
        parts += ["<h2>Per-step curves</h2>", _img(_png(plots.steps, found), "per-step curves")]
    for table, (_, members) in zip(found, frame.groupby(keys, sort=False, dropna=False)):
        parts += [f"<h2>{html.escape(table.title)}</h2>",
                  table.display().to_html(index=False, border=0, classes="results")]
        if table.commands:
            parts.append("<p>Made by:</p><pre>" + html.escape("\n".join(table.commands)) + "</pre>")
        parts += [_figure_tag(caption, path) for caption, path in _run_pictures(members)]
    beside = [path for path in (Path(p).with_name(f"{Path(p).stem}_generations.png") for p in sources) if path.is_file()]
    parts += [_figure_tag(f"{path.name} (beside the table)", path) for path in beside]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>unlearn · {html.escape(name)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


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
