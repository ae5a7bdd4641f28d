"""Per-step tables and curves for deletion streams (rows with a `step` field, written by scenario=sequence).

A step row is an ordinary result row plus `scenario`, `step`, `steps` and `request` (what step k asked to
forget); its `metrics` hold the task's metrics on the current request, `earlier_*` on everything forgotten
before, `RTE_s` (this request) and `cum_RTE_s`, and for class streams acc_f, acc_r, acc_old, drop_f, h_mean.
`reference.oracle` holds the same figures for the step's retrain (its `cum_RTE_s` = retraining at every step).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from unlearn.report.tables import latex, markdown, to_csv

ORACLE = "retrain"
ID_METRICS = ("UA", "earlier_UA", "RA", "TA", "MIA", "RTE_s", "cum_RTE_s")
CLASS_METRICS = ("acc_f", "acc_r", "acc_old", "h_mean", "cum_RTE_s")
EXACT_FIGURES = ("shards_retrained", "stages_retrained", "speedup", "live_shards")


def step_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("step") is not None]


def default_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The headline columns: continual-forgetting figures for class streams, forget/utility for id streams,
    and exact methods' retraining figures where present."""
    kind = "classes" if any("acc_f" in r["metrics"] for r in rows) else "ids"
    names = list(CLASS_METRICS if kind == "classes" else ID_METRICS)
    return names + [n for n in EXACT_FIGURES if any(n in r["metrics"] for r in rows)]


def stream_of(row: dict[str, Any]) -> str:
    """What makes streams comparable: the number of steps and the size of each request."""
    request = row["request"]
    size = (f"{len(request['classes'])} classes" if "classes" in request else
            f"count={request['count']}" if request.get("count") is not None else f"ratio={request.get('ratio')}")
    return f"{row['steps']} requests of {size}"


def label(row: dict[str, Any], by: Sequence[str] = ()) -> str:
    """The method's name, with the method parameters in `by` that it has: "s3t (budget=4)"."""
    params = [f"{p}={row['method_params'][p]}" for p in by if p in row.get("method_params", {})]
    return f"{row['method']} ({', '.join(params)})" if params else row["method"]


def frame(rows: Sequence[dict[str, Any]], with_oracle: bool = True, by: Sequence[str] = ()) -> pd.DataFrame:
    """One record per (row, role): method rows (labelled by `label`), and the step's oracle once per (step,
    seed, stream) as `retrain`."""
    def oracle_id(r: dict[str, Any]) -> tuple:
        return r["data"], r["model"], r["step"], r["seed"], r.get("stream_seed"), stream_of(r)

    records = []
    seen = {oracle_id(r) for r in step_rows(rows) if r["method"] == ORACLE}  # a run of method=retrain itself
    for r in step_rows(rows):
        base = {"data": r["data"], "model": r["model"], "kind": r["forget"].get("kind"), "stream": stream_of(r),
                "step": r["step"], "seed": r["seed"]}
        records.append(base | {"method": label(r, by)} | r["metrics"])
        if with_oracle and r["reference"]["oracle"] and oracle_id(r) not in seen:  # empty: scenario.oracle=false
            seen.add(oracle_id(r))
            records.append(base | {"method": ORACLE} | r["reference"]["oracle"])
    return pd.DataFrame.from_records(records)


def steps_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None, fmt: str = "md",
                by: Sequence[str] = ()) -> str:
    """Methods × steps: mean ± std over seeds and streams of each metric, one table per (data, model, kind);
    `by` names method parameters that tell configurations of one method apart."""
    df = frame(rows, by=by)
    if df.empty:
        return ""
    out = []
    for (data, model, kind, stream), part in df.groupby(["data", "model", "kind", "stream"], dropna=False, sort=False):
        names = metrics or default_metrics([r for r in step_rows(rows) if r["forget"].get("kind") == kind])
        names = [m for m in names if m in part.columns and part[m].notna().any()]
        grouped = part.groupby(["method", "step"], sort=False)
        mean, std, n = grouped[names].mean(), grouped[names].std(), grouped.size()
        table = []
        for (method, step) in sorted(mean.index, key=lambda i: (i[0] != ORACLE, i[0], i[1])):
            cells = []
            for m in names:
                mu, sd = mean.loc[(method, step), m], std.loc[(method, step), m]
                cells.append("—" if pd.isna(mu) else (f"{mu:.2f}" if pd.isna(sd) else f"{mu:.2f} ± {sd:.2f}"))
            table.append([method, step, int(n.loc[(method, step)]), *cells])
        headers = ["method", "step", "n", *names]
        render = {"md": markdown, "csv": to_csv, "latex": latex}[fmt]
        out.append(f"### sequence · data={data} · model={model} · {stream}\n\n" + render(headers, table))
    return "\n\n".join(out) + "\n"


def plot_steps(rows: Sequence[dict[str, Any]], path: str | Path, metrics: Sequence[str] | None = None,
               by: Sequence[str] = ()) -> Path:
    """Per-step curves: one panel per metric, one line per method (mean over seeds, band = ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = frame(rows, by=by)
    metrics = [m for m in (metrics or default_metrics(step_rows(rows))) if m in df.columns]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method, part in df.groupby("method", sort=True):
            stats = part.groupby("step")[metric].agg(["mean", "std"])
            style = dict(color="black", linestyle="--") if method == ORACLE else {}
            ax.plot(stats.index, stats["mean"], marker="o", label=method, **style)
            ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                            alpha=0.15, **({"color": "black"} if method == ORACLE else {}))
        ax.set_title(metric)
        ax.set_xlabel("request")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m unlearn.report.steps ROWS [--metrics a,b] [--by param,param] [--out FILE.md] [--plot FILE.png]`"""
    import argparse

    from unlearn.report.compare import load_rows

    parser = argparse.ArgumentParser(prog="python -m unlearn.report.steps")
    parser.add_argument("path")
    parser.add_argument("--metrics")
    parser.add_argument("--by", help="method parameters that tell configurations apart, e.g. budget,orders")
    parser.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    parser.add_argument("--out")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    rows = step_rows(load_rows(args.path))
    metrics = args.metrics.split(",") if args.metrics else None
    by = args.by.split(",") if args.by else ()
    text = steps_table(rows, metrics, args.format, by)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    if args.plot:
        plot_steps(rows, args.plot, metrics, by)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
