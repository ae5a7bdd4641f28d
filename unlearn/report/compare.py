"""Rows → the tables papers print: methods × metrics, mean ± std and a 95% t-interval over seeds, gap to
Retrain, Avg. Gap, RTE and RTE relative to Retrain; plus a forgetting–utility plot, per-step curves for
sequences (and `steps_table`, a stream's steps in one table) and a one-page HTML report. Built on the
DataFrame of `unlearn.results.load`; each setting's Table comes from `unlearn.report.summary`.

Rows from different settings (task, data, model, forget request, and scenario and step where rows carry them)
are never mixed: each gets its own table. Each row is compared with its own oracle (its `reference.oracle`); a
configuration run twice counts once (the latest run; the table says how many rows it dropped). The columns are
the task's gap metrics, as the rows name them, then the chosen extra metrics, so a new task or metric needs no
edit here. A Markdown table wider than a terminal (`unlearn.report.tables.WIDTH`) is printed as several, each led
by the method (and n) columns; a metric with one run shows its mean alone (no '± 0.00').
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from unlearn.errors import UnlearnError
from unlearn.report.tables import WIDTH, attack_of, fmt, split_markdown, term, wrap
from unlearn.report.summary import ORACLE, Table, latest_runs, summarise, title  # noqa: F401  (importable here)
from unlearn.results import SETTING, from_rows, load, load_rows  # noqa: F401  (load_rows: kept importable from here)

#: shown beside the gap metrics when present (the rest stay in the rows and in `unlearn.results.load`)
EXTRA_METRICS = ("forget_quality", "model_utility", "privleak", "kl_forget", "klom_forget", "lira_auc", "rmia_auc", "eps_score")
FORMATS = ("md", "csv", "latex")
LEGEND = ("mean ± std over runs (the mean alone where a metric has one run); (gap to Retrain) after each gap metric: "
          "|mean over runs of (metric − the run's own oracle's)|; Avg.Gap with its 95% t-interval; RTE in seconds.")
#: shown after the gap metrics (and any earlier_* metrics) in a stream's per-step table, when present
STEP_METRICS = ("acc_f", "acc_r", "acc_old", "h_mean", "cum_RTE_s",
                "shards_retrained", "stages_retrained", "speedup", "live_shards")
#: shown first in that table when the rows carry no gaps to show the task's metrics by (scenario.oracle=false)
UNGAPPED_METRICS = ("UA", "RA", "TA", "MIA")
STEPS_LEGEND = ("mean ± std over runs (the mean alone where n = 1); (gap to that step's Retrain) after each gap "
                "metric; Avg.Gap to that step's Retrain; RTE of the step and cum_RTE_s (steps 1..k) in seconds.")


def setting_keys(frame: pd.DataFrame) -> list[str]:
    return [*SETTING, *(["scenario"] if "scenario" in frame else []), *(["step"] if frame["step"].notna().any() else [])]


def tables(frame: pd.DataFrame, by: str = "method", extra: Sequence[str] = EXTRA_METRICS) -> list[Table]:
    """One Table per setting of `frame` (a DataFrame from `unlearn.results.load`), in order of appearance."""
    keys = setting_keys(frame)
    return [summarise(members, dict(zip(keys, values)), by, extra, frame.attrs["metrics_by_task"][values[0]])
            for values, members in frame.groupby(keys, sort=False, dropna=False)]


def render(found: list[Table], fmt: str) -> str:
    if fmt == "csv":  # every number in its own column; one header over the union of the settings' columns
        blocks = []
        for table in found:
            data = table.summary.reset_index()
            for i, (key, value) in enumerate(table.setting.items()):
                data.insert(i, key, value)
            blocks.append(data)
        return pd.concat(blocks, ignore_index=True, sort=False).to_csv(index=False, float_format="%.4f", na_rep="nan",
                                                                       lineterminator="\n")
    if fmt == "latex":
        return "\n\n".join(latex(t) for t in found) + "\n"
    return "\n\n".join(
        heading(t.setting) + f"\n\n{wrap(LEGEND)}\n\n" + split_markdown(cells(t), ["method", "n"])
        + (f"\n\n{t.note}" if t.note else "")
        + ("\n\nMade by:\n" + "\n".join(f"    {c}" for c in t.commands) if t.commands else "") for t in found) + "\n"


def markdown(table: pd.DataFrame, keep: Sequence[str] = ("method",), width: int = WIDTH) -> str:
    """A table of strings as Markdown, split into tables of at most `width` characters a line, each led by the
    `keep` columns."""
    return split_markdown(table, keep, width)


def _short(value: Any, limit: int = 24) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def forget_label(request: Any) -> str:
    """The forget request of a setting (compare's canonical JSON) in a few words: its builder and up to three of
    its set fields, long values cut ("random ratio=0.1", "concept concept=circle axis=shape")."""
    try:
        fields = json.loads(request) if isinstance(request, str) else request
    except json.JSONDecodeError:
        return _short(request, 60)
    if not isinstance(fields, dict):
        return _short(fields, 60)
    shown = [f"{k}={_short(v)}" for k, v in fields.items() if k != "builder" and v not in (None, "", [], {})]
    return " ".join([str(fields.get("builder", "?")), *shown[:3], *(["…"] if len(shown) > 3 else [])])


def short_title(setting: dict) -> str:
    """A setting in one short line: task · data · model · forget (`forget_label`) · scenario, step, ..."""
    s = setting
    extra = [f"{k}={s[k]}" for k in s if k not in SETTING and not pd.isna(s[k])]
    return " · ".join([str(s["task"]), str(s["data"]), str(s["model"]), f"forget={forget_label(s['forget'])}", *extra])


def heading(setting: dict, width: int = WIDTH) -> str:
    """A Markdown heading (`short_title`), then the full setting (`title`) wrapped, where it says more."""
    full = title(setting)
    short = short_title(setting)
    return f"### {short}" + (f"\n\n{wrap('setting: ' + full, width)}" if full != short else "")


def spread(mean: pd.Series, std: pd.Series, ci95: pd.Series) -> pd.Series:
    """'mean ± std' cells, the mean alone where the metric has a single value (its interval is undefined: NaN),
    '—' where it has none."""
    text = mean.map(fmt) + (" ± " + std.map(fmt)).where(ci95.notna(), "")
    return text.where(mean.notna(), "—")


def cells(table: Table) -> pd.DataFrame:
    """A Table as printed (all strings): method, n, each metric as `spread` with ' (gap)' after a gap metric,
    Avg.Gap with its 95% interval, RTE (s), RTE/Retrain (cpu or wall: the seconds it divides), diverged."""
    s = table.summary
    label = s.index.to_series()
    out = {"method": label, "n": s["n"].astype(str)}
    for m in table.metrics:
        out[m] = spread(s[f"{m}_mean"], s[f"{m}_std"], s[f"{m}_ci95"])
        if m in table.gap_metrics:
            gap = pd.to_numeric(s[f"{m}_gap"], errors="coerce")
            out[m] += (" (" + gap.map(fmt) + ")").where((label != ORACLE) & gap.notna(), "")
    ci = s["avg_gap_ci95"]
    low, high = (s["avg_gap_mean"] - ci).map(fmt), (s["avg_gap_mean"] + ci).map(fmt)
    out |= {"Avg.Gap": spread(s["avg_gap_mean"], s["avg_gap_std"], ci),
            "Avg.Gap 95% CI": ("[" + low + ", " + high + "]").where(ci.notna(), ""),
            "RTE (s)": s["rte_s"].map(fmt).where(s["rte_s"].notna(), "—"),
            f"RTE/Retrain ({table.rte_basis})": s["rte_relative"].map(fmt).where(s["rte_relative"].notna(), "—"),
            "diverged": s["diverged"].astype(str)}
    return pd.DataFrame(out).astype(str)


def metric_groups(members: pd.DataFrame, metrics: Sequence[str]) -> dict[str, list[str]]:
    """The metrics among `metrics` and the rows' references that have a value in `members` (one setting's rows)
    and that the report shows in sections of their own: 'attack' (`<attack>.<metric>`) and 'population'
    (eval.oracles=N figures), in order of appearance."""
    references = [c.split(".", 1)[1] for c in members if c.startswith(("ref_original.", "ref_oracle."))]
    names = [n for n in dict.fromkeys([*metrics, *references])
             if any(c in members and members[c].notna().any() for c in (n, f"ref_original.{n}", f"ref_oracle.{n}"))]
    task = members["task"].iloc[0] if len(members) else None
    return {"attack": [n for n in names if attack_of(n) is not None],
            "population": [n for n in names if attack_of(n) is None
                           and getattr(term(n, task), "family", "") == "population"]}


def reference_view(members: pd.DataFrame, names: Sequence[str], by: str = "method") -> pd.DataFrame:
    """One setting's rows → strings with the original and the oracle beside the methods: 'original' (the rows'
    reference original, `ref_original.<m>`), 'retrain' (real retrain runs, else the rows' reference oracles),
    then each value of `by`; columns method, n (the runs with any of `names`) and each of `names` as `spread` over
    runs ('—' where none). A reference shared by several rows (one original for every method of a seed) counts
    once."""
    members, _ = latest_runs(members)
    own = members[members["method"] != ORACLE]
    blocks = []
    for label, prefix in (("original", "ref_original."), (ORACLE, "ref_oracle.")):
        if label == ORACLE and (members["method"] == ORACLE).any():
            blocks.append(members[members["method"] == ORACLE].reindex(columns=names).assign(_label=ORACLE))
            continue
        refs = [f"{prefix}{m}" for m in names if f"{prefix}{m}" in members]
        if refs:
            ref = members[members[refs].notna().any(axis=1)].drop_duplicates(["seed", *refs])
            blocks.append(pd.DataFrame({m: ref.get(f"{prefix}{m}", np.nan) for m in names}).assign(_label=label))
    blocks.append(own.reindex(columns=names).assign(_label=own[by].map(str) if by in own else own["method"]))
    rows = pd.concat(blocks, ignore_index=True)
    rows = rows[rows[list(names)].notna().any(axis=1)]  # runs without these figures (no attack, one model) say nothing
    grouped = rows[list(names)].astype(float).groupby(rows["_label"], sort=False)
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()
    ci = std.where(count > 1)  # stands in for the interval: defined only with more than one value
    out = {"method": mean.index.to_series(), "n": grouped.size().astype(str)}
    out |= {m: spread(mean[m], std[m], ci[m]) for m in names}
    return pd.DataFrame(out).astype(str).reset_index(drop=True)


def latex(table: Table) -> str:
    shown = table.display()
    caption = f"{table.title}. {table.note}" if table.note else table.title
    caption = caption.translate(str.maketrans({c: "\\" + c for c in "_%&#${}"}))  # to_latex leaves it as is
    text = shown.to_latex(index=False, escape=True, caption=caption, position="t", column_format="l" * shown.shape[1])
    return text.strip().replace("±", r"$\pm$")


def compare(source: str | Path | pd.DataFrame, fmt: str = "md", by: str = "method", plot_path: Path | None = None,
            metrics: Sequence[str] | None = None) -> str:
    """Tables of the rows per setting. `source`: anything `unlearn.results.load` reads, or its DataFrame (a
    filtered one, say); `by`: the column to group by (e.g. method_params.lr); `metrics`: the columns after the
    gap metrics (default: EXTRA_METRICS where present). Writes the trade-off plot (and `<plot>_steps.png` when
    rows have steps, `<plot>_trajectory.png` when rows recorded a trajectory) to `plot_path`, when given."""
    if fmt not in FORMATS:
        raise UnlearnError(f"--format {fmt!r} is not one of {FORMATS}")
    frame = source if isinstance(source, pd.DataFrame) else load(source)
    known = frame.attrs["metrics"]
    unknown = [m for m in metrics or () if m not in known]
    if unknown:
        raise UnlearnError(f"--metrics {','.join(unknown)}: no row has them; the rows have: {', '.join(sorted(known))}")
    found = tables(frame, by, EXTRA_METRICS if metrics is None else metrics)
    if plot_path is not None:
        from unlearn.report import plots

        plots.tradeoff(found, plot_path)
        if "step" in setting_keys(frame):
            plots.steps(found, Path(plot_path).with_name(Path(plot_path).stem + "_steps.png"))
        if plots.has_trajectories(frame):
            plots.trajectories(frame, Path(plot_path).with_name(Path(plot_path).stem + "_trajectory.png"))
    return render(found, fmt)


# ---- a deletion stream: its steps in one table ------------------------------------------------------------------

def stream_tables(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None,
                  by: Sequence[str] = ()) -> list[Table]:
    """compare's per-step Tables of result rows in hand (e.g. the rows of one `scenario=sequence` run): one per
    (setting, step), each against that step's oracle. Columns: the gap metrics, then `metrics` where present
    (default: the rows' earlier_* metrics, then STEP_METRICS; UNGAPPED_METRICS first where no row has an
    oracle). `by` names method parameters that tell configurations of one method apart: rows are labelled
    "method (p=v, ...)". For curves: `plots.steps(stream_tables(rows), path)`."""
    frame = from_rows(rows)
    if metrics is None:
        gapped = any(c.startswith("gap.") and frame[c].notna().any() for c in frame)
        # an attack's figures on the gap metrics (relearn.UA, ...) where the rows carry them
        attacked = {c[len("gap."):] for c in frame if c.startswith("gap.")}
        metrics = ([] if gapped else list(UNGAPPED_METRICS)) + \
            [m for m in frame.attrs["metrics"] if m.startswith("earlier_")] + \
            [m for m in frame.attrs["metrics"] if "." in m and m.split(".", 1)[1] in attacked] + list(STEP_METRICS)
    params = [p for p in by if f"method_params.{p}" in frame]
    if params:
        def label(row: pd.Series) -> str:
            shown = [f"{p}={row[f'method_params.{p}']}" for p in params if not pd.isna(row[f"method_params.{p}"])]
            return f"{row['method']} ({', '.join(shown)})" if shown else row["method"]

        frame = frame.assign(configuration=frame.apply(label, axis=1))
    return tables(frame, "configuration" if params else "method", metrics)


def steps_view(found: list[Table]) -> list[tuple[dict, pd.DataFrame]]:
    """Per-step Tables (`stream_tables`, or `tables` of rows with steps) → one table per stream setting, as
    (setting less its step, strings): a row per (method, step), Retrain first, then methods in order of
    appearance, each by step; columns n, the Table's metrics ('mean ± std (gap)', '—' where missing), Avg.Gap and
    RTE (s), and diverged when any step diverged."""
    streams: dict[tuple, list[Table]] = {}
    for table in found:
        streams.setdefault(tuple((k, v) for k, v in table.setting.items() if k != "step"), []).append(table)
    out = []
    for setting, members in streams.items():
        members = sorted(members, key=lambda t: (pd.isna(t.setting.get("step")), t.setting.get("step")))
        labels = list(dict.fromkeys(label for t in members for label in t.summary.index))
        labels.sort(key=lambda label: label != ORACLE)
        widest = max(members, key=lambda t: len(t.metrics)).metrics  # step 1 has no earlier_* figures
        metrics = list(dict.fromkeys([*widest, *(m for t in members for m in t.metrics)]))
        records = []
        for label in labels:
            for table in (t for t in members if label in t.summary.index):
                row, n = table.summary.loc[label], int(table.summary.loc[label, "n"])

                def cell(name: str, gap: bool = False) -> str:
                    """mean ± std (the std where this metric has more than one value: its interval is defined)"""
                    if f"{name}_mean" not in row or pd.isna(row[f"{name}_mean"]):
                        return "—"
                    text = fmt(row[f"{name}_mean"])
                    if not pd.isna(row[f"{name}_ci95"]):
                        text += f" ± {fmt(row[f'{name}_std'])}"
                    shown = gap and label != ORACLE and not pd.isna(pd.to_numeric(row[f"{name}_gap"], errors="coerce"))
                    return text + (f" ({fmt(float(row[f'{name}_gap']))})" if shown else "")

                record = {"method": label, "step": str(table.setting.get("step")), "n": str(n)}
                record |= {m: cell(m, gap=m in table.gap_metrics) for m in metrics}
                record |= {"Avg.Gap": cell("avg_gap"), "RTE (s)": "—" if pd.isna(row["rte_s"]) else fmt(row["rte_s"]),
                           "diverged": str(int(row["diverged"]))}
                records.append(record)
        view = pd.DataFrame.from_records(records)
        if (view["diverged"] == "0").all():
            view = view.drop(columns="diverged")
        if (view["Avg.Gap"] == "—").all():  # no oracle (scenario.oracle=false)
            view = view.drop(columns="Avg.Gap")
        out.append((dict(setting), view))
    return out


def steps_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None, fmt: str = "md",
                by: Sequence[str] = ()) -> str:
    """A deletion stream's rows → methods × steps tables (`steps_view` of `stream_tables`), as printed at the
    end of a `scenario=sequence` run; fmt "csv" gives every step's numbers (compare's csv)."""
    if fmt not in FORMATS:
        raise UnlearnError(f"format {fmt!r} is not one of {FORMATS}")
    rows = [r for r in rows if r.get("step") is not None]
    if not rows:
        return ""
    found = stream_tables(rows, metrics, by)
    if fmt == "csv":
        return render(found, "csv")
    if fmt == "latex":
        return "\n\n".join(view.to_latex(index=False, escape=True, caption=title(setting)).strip()
                            .replace("±", r"$\pm$") for setting, view in steps_view(found)) + "\n"
    return "\n\n".join(heading(setting) + f"\n\n{wrap(STEPS_LEGEND)}\n\n" + markdown(view, ["method", "step", "n"])
                         for setting, view in steps_view(found)) + "\n"
