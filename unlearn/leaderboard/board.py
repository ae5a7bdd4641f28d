"""Result rows → one ranked `Board` per setting: Avg. Gap over seeds with its 95% t-interval, the rank rule, the
Original and Retrain reference lines, RTE and the robustness columns.

A *setting* is what makes Avg. Gaps comparable: task, data, model, the forget request (builder and its
configuration, any pruning first: `unlearn.results.forget_request`) and the scenario; a deletion stream also by
its stream (`scenario` config less its seed and oracle switch) and it is ranked at its last step. Rows of one
setting from several experiments are pooled; each run's Avg. Gap is to its own oracle (the Board says when a seed
has runs against different oracles, e.g. from other code versions).

Within a setting a *configuration* is a method, and, where that method's rows differ in a parameter (a sweep, as
`compare --by method_params.lr` would show), the parameters that differ: "ga (lr=0.001)". The unit of replication
is the seed (with the stream seed, where rows have one): the runs of a configuration with one seed (reruns in
other experiments, the same run under several attacks) are averaged first, then

- mean over seeds, sample std, and the 95% t-interval mean ± t(0.975, n−1)·std/√n (n seeds); with one seed the
  interval is the value itself (no width), shown without ±;
- places 1, 2, ... by mean Avg. Gap, ascending; a configuration's **rank** is the place of the best configuration
  whose interval overlaps its own (itself where none better does). So configurations that cannot be told apart
  from the leader share rank 1, and a rank never passes along a chain of overlaps: if A overlaps B and B overlaps
  C but A and C are apart, C takes B's place, not A's. Closed intervals: touching counts as overlap.
  A board lists configurations by (rank, mean): a configuration with a wide interval can rank above one with a
  lower mean but a narrow interval that better configurations beat beyond doubt. A configuration whose every run
  diverged has no Avg. Gap and no rank; it goes last.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t

from unlearn.errors import UnlearnError
from unlearn.report.summary import ORACLE, latest_runs
from unlearn.report.tables import attack_of
from unlearn.results import SETTING

LEVEL = 0.95
RETRAIN, ORIGINAL = "Retrain (oracle)", "Original"
#: metrics an attack reports about itself, not about the model: left out of its robustness figure
BOOKKEEPING = ("cost_s", "layer", "fit_acc", "rounded_back", "below_half_step", "sparsity", "pre_ASR")
#: scenario config fields that do not make another stream (a seed is a replicate; `oracle` only adds references)
NOT_STREAM = ("_target_", "stream_seed", "oracle")


@dataclass
class Board:
    """One setting's ranking.

    `entries`: one row per line of the board, Retrain and Original first, then the configurations by (rank,
    mean); index: the label; columns `kind` ("reference" | "method"), `n` (seeds with a finite value), `runs`
    (rows), `mean`, `std`, `half` (95% t half-width; NaN for one seed), `low`, `high` (the interval; the mean
    for one seed), `place`, `rank` (NaN for references and for a configuration without any finite Avg. Gap),
    `rte_s` (mean seconds of the method: RTE_s, or cum_RTE_s over a stream; Retrain: the oracle's training),
    `rte_relative` (mean of each run's RTE / its oracle's), `diverged` (rows with status other than ok).
    Avg. Gap and its figures are in the gap metrics' own units (`gap_metrics`).
    `robust_mean`, `robust_half`, `robust_n`: the same index × one column per attack configuration (`attacks`):
    that configuration's robustness figure (see `robustness`), mean over seeds, t half-width, seeds."""
    setting: dict
    gap_metrics: list[str]
    entries: pd.DataFrame
    attacks: list[str] = field(default_factory=list)
    robust_mean: pd.DataFrame = field(default_factory=pd.DataFrame)
    robust_half: pd.DataFrame = field(default_factory=pd.DataFrame)
    robust_n: pd.DataFrame = field(default_factory=pd.DataFrame)
    sources: list[str] = field(default_factory=list)
    oracles_per_seed: int = 1  # the most distinct oracles one seed's runs were measured against
    collapsed: int = 0  # rows dropped as reruns of a configuration (the latest kept)


def interval(values: pd.Series) -> pd.Series:
    """Per-seed values (NaN ignored) → n, mean, std (sample), half (95% t half-width, NaN for n < 2), low, high
    (mean ∓ half; the mean itself for one value)."""
    finite = pd.to_numeric(values, errors="coerce").dropna()
    n = len(finite)
    mean = finite.mean() if n else np.nan
    std = finite.std(ddof=1) if n > 1 else np.nan
    half = t.ppf(0.5 + LEVEL / 2, n - 1) * std / np.sqrt(n) if n > 1 else np.nan
    width = 0.0 if n == 1 else half
    return pd.Series({"n": n, "mean": mean, "std": std, "half": half, "low": mean - width, "high": mean + width})


def rank(entries: pd.DataFrame) -> pd.DataFrame:
    """`entries` (columns mean, low, high) with `place` (1.. by mean, ascending; ties in mean keep their order) and
    `rank` (the place of the best entry whose [low, high] overlaps its own), sorted by (rank, mean). Entries
    with a NaN mean get neither and go last."""
    ranked = entries[entries["mean"].notna()].sort_values("mean", kind="stable")
    place = pd.Series(np.arange(1, len(ranked) + 1), index=ranked.index, dtype=float)
    low, high = ranked["low"].to_numpy(), ranked["high"].to_numpy()
    overlaps = (low[:, None] <= high[None, :]) & (low[None, :] <= high[:, None])
    # row i's first overlapping column in place order (the diagonal always overlaps)
    first = overlaps.argmax(axis=1) if len(ranked) else []
    ranked = ranked.assign(place=place, rank=place.to_numpy()[first])
    ranked = ranked.sort_values(["rank", "mean"], kind="stable")
    rest = entries[entries["mean"].isna()].assign(place=np.nan, rank=np.nan)
    return pd.concat([ranked, rest])


# ---- settings ------------------------------------------------------------------------------------------------

def _stream(config: Any) -> str | float:
    """A stream's identity: its scenario config less NOT_STREAM, as "k=v, k=v" (NaN outside a sequence)."""
    scenario = config.get("scenario") if isinstance(config, dict) else None
    if not isinstance(scenario, dict) or "sequence" not in str(scenario.get("_target_", "")).lower():
        return np.nan
    return ", ".join(f"{k}={v}" for k, v in sorted(scenario.items()) if k not in NOT_STREAM)


def prepared(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`frame` (from `unlearn.results.load`) with the setting columns the board groups by: `scenario` (NaN for a
    single request; "sequence (stream...)" for a stream) and `_replicate` (seed, and stream seed where present);
    and the setting keys."""
    frame = frame.copy()
    scenario = frame["scenario"] if "scenario" in frame else pd.Series(np.nan, index=frame.index, dtype=object)
    scenario = scenario.where(~scenario.isin(["single", None]), np.nan).astype(object)
    if "config" in frame:
        streams = frame["config"].map(_stream)
        scenario = scenario.where(streams.isna(), "sequence (" + streams.astype(str) + ")")
    frame["scenario"] = scenario
    def text(column: str) -> pd.Series | str:
        return frame[column].map(lambda v: "" if pd.isna(v) else str(v)) if column in frame else ""

    frame["_replicate"] = text("seed") + "/" + text("stream_seed")
    return frame, [*SETTING, "scenario"]


def configuration_labels(members: pd.DataFrame) -> pd.Series:
    """Each row's configuration: its method, plus "(p=v, ...)" for the method parameters whose values differ among
    that method's rows here (a parameter missing from some rows, as older rows miss newer ones, is not a
    difference; a row without it shows nothing for it)."""
    labels = members["method"].astype(str).copy()
    params = [c for c in members if c.startswith("method_params.")]
    for method, rows in members.groupby("method", sort=False):
        varied = [c for c in params if rows[c].dropna().astype(str).nunique() > 1]
        if not varied:
            continue
        for index, row in rows.iterrows():
            shown = [f"{c[len('method_params.'):]}={row[c]}" for c in varied if not pd.isna(row[c])]
            labels[index] = f"{method} ({', '.join(shown)})" if shown else method
    return labels


# ---- attacks ---------------------------------------------------------------------------------------------------

def _attack_config(config: Any) -> dict:
    attack = config.get("attack") if isinstance(config, dict) else None
    return {k: v for k, v in attack.items() if k != "_target_"} if isinstance(attack, dict) else {}


def attack_labels(members: pd.DataFrame, metrics: list[str]) -> dict[str, pd.Series]:
    """Per attack that ran here (the prefix of `<attack>.<metric>` columns with a value), each row's attack
    configuration label (NaN where the row has no such figures): the attack's name, plus "k=v" for the settings
    in which its configurations here differ ("quantize bits=4")."""
    found: dict[str, pd.Series] = {}
    for prefix in dict.fromkeys(a for a in map(attack_of, metrics) if a):
        names = [m for m in metrics if attack_of(m) == prefix and m in members]
        ran = members[names].notna().any(axis=1) if names else pd.Series(False, index=members.index)
        if not ran.any():
            continue
        configs = members.loc[ran, "config"].map(_attack_config) if "config" in members else \
            pd.Series([{}] * int(ran.sum()), index=members.index[ran])
        keys = sorted({k for c in configs for k in c})
        varied = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
        label = configs.map(lambda c: " ".join([prefix, *(f"{k}={c.get(k)}" for k in varied)]))
        found[prefix] = label.reindex(members.index)
    return found


def robustness(members: pd.DataFrame, prefix: str, gap_metrics: list[str], who: str = "") -> pd.Series:
    """Each row's robustness figure after attack `prefix`: the mean over metrics m of |`who`<prefix>.m −
    ref_oracle.<prefix>.m| — the attacked model's Avg. Gap to the oracle attacked the same way, in the metrics'
    units (0: the attack finds what it finds in a model that never saw F). m runs over the task's gap metrics the
    attack reports, else (an attack that reports none of them: the LM probes) over every metric it reports less
    BOOKKEEPING. `who`: "" for the unlearned model, "ref_original." for the original."""
    shown = [m for m in gap_metrics if f"{prefix}.{m}" in members and members[f"{prefix}.{m}"].notna().any()]
    if not shown:
        own = [c[len(prefix) + 1:] for c in members if attack_of(c) == prefix and members[c].notna().any()]
        shown = [m for m in own if m not in BOOKKEEPING]
    pairs = [(f"{who}{prefix}.{m}", f"ref_oracle.{prefix}.{m}") for m in shown]
    pairs = [(a, b) for a, b in pairs if a in members and b in members]
    return _mean_gap(members, pairs)


def _mean_gap(members: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.Series:
    """Per row, the mean over (a, b) column pairs of |a − b|, skipping pairs with a missing side (NaN: none)."""
    if not pairs:
        return pd.Series(np.nan, index=members.index)
    model = members[[a for a, _ in pairs]].astype(float).to_numpy()
    oracle = members[[b for _, b in pairs]].astype(float).to_numpy()
    return pd.DataFrame(np.abs(model - oracle), index=members.index).mean(axis=1)


# ---- one setting -----------------------------------------------------------------------------------------------

def _per_seed(values: pd.Series, members: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """values → a (label × replicate) mean table: a seed's runs averaged first."""
    data = pd.DataFrame({"v": pd.to_numeric(values, errors="coerce"), "label": labels,
                         "replicate": members["_replicate"]}).dropna(subset=["label"])
    return data.groupby(["label", "replicate"], sort=False)["v"].mean().unstack("replicate")


def _distinct_per_seed(values: pd.Series, members: pd.DataFrame) -> pd.Series:
    """A reference figure each row carries (the same reference repeated over rows): per replicate, the mean of its
    distinct values, so a reference shared by every method counts once."""
    data = pd.DataFrame({"v": pd.to_numeric(values, errors="coerce"), "replicate": members["_replicate"]}).dropna()
    return data.drop_duplicates().groupby("replicate", sort=False)["v"].mean()


def _exact_zero(replicates: pd.Series) -> pd.Series:
    """`interval`'s figures of a value that is 0 by definition (Retrain against itself) on these replicates: no
    interval to show, however many seeds."""
    n = len(replicates)
    return pd.Series({"n": n, "mean": 0.0 if n else np.nan, "std": np.nan, "half": np.nan,
                      "low": 0.0 if n else np.nan, "high": 0.0 if n else np.nan})


def _methods(own: pd.DataFrame, labels: pd.Series, clock: str, relative: pd.Series) -> pd.DataFrame:
    """The configurations' lines of a board (see Board.entries), ranked."""
    avg_gap = _per_seed(own["avg_gap"], own, labels)
    empty = interval(pd.Series(dtype=float))
    stats = {label: interval(avg_gap.loc[label]) if label in avg_gap.index else empty
             for label in dict.fromkeys(labels)}
    entries = pd.DataFrame(stats, index=empty.index).T.astype(float)
    seconds = own[clock] if clock in own else pd.Series(np.nan, index=own.index)
    return rank(entries.assign(
        kind="method", rte_s=_per_seed(seconds, own, labels).mean(axis=1).reindex(entries.index),
        rte_relative=_per_seed(relative, own, labels).mean(axis=1).reindex(entries.index),
        runs=labels.value_counts().reindex(entries.index).astype(float),
        diverged=(own["status"] != "ok").groupby(labels).sum().reindex(entries.index).astype(float)))


def _references(members: pd.DataFrame, gap_metrics: list[str], clock: str) -> pd.DataFrame:
    """The Retrain and Original lines: Retrain's Avg. Gap is 0 by definition and its RTE the oracle's training
    (`ref_oracle.<clock>`, or real retrain runs' own); the Original's Avg. Gap is the same mean of |gap| with the
    original's metrics (`ref_original.<m>`) in the method's place: what doing nothing scores."""
    real = members["method"] == ORACLE
    has_oracle = real.any() or any(f"ref_oracle.{m}" in members and members[f"ref_oracle.{m}"].notna().any()
                                   for m in gap_metrics)
    seconds = [_distinct_per_seed(members[c], members) for c in (f"ref_oracle.{clock}",) if c in members]
    seconds += [_distinct_per_seed(members.loc[real, clock], members[real])] if clock in members else []
    per_seed = pd.concat(seconds).groupby(level=0).mean() if seconds else pd.Series(dtype=float)
    retrain = _exact_zero(members["_replicate"].drop_duplicates() if has_oracle else pd.Series(dtype=object))
    pairs = [(f"ref_original.{m}", f"ref_oracle.{m}") for m in gap_metrics]
    original = interval(_distinct_per_seed(_mean_gap(members, [(a, b) for a, b in pairs
                                                               if a in members and b in members]), members))
    timed = per_seed.notna().any()
    lines = {RETRAIN: dict(retrain) | {"rte_s": per_seed.mean() if timed else np.nan,
                                       "rte_relative": 1.0 if timed else np.nan, "runs": float(real.sum())},
             ORIGINAL: dict(original) | {"rte_s": np.nan, "rte_relative": np.nan, "runs": 0.0}}
    return pd.DataFrame(lines).T.astype(float).assign(kind="reference", place=np.nan, rank=np.nan, diverged=0.0)


def _robustness(members: pd.DataFrame, own: pd.DataFrame, labels: pd.Series, gap_metrics: list[str],
                metrics: list[str], index: pd.Index) -> dict[str, pd.DataFrame]:
    """Per attack configuration that ran here, `interval`'s figures of its robustness figure (`robustness`) per
    line of the board (`index`): the configurations', the Original's (`ref_original.`) and Retrain's (0)."""
    found: dict[str, pd.DataFrame] = {}
    for prefix, row_labels in attack_labels(members, metrics).items():
        figure = robustness(own, prefix, gap_metrics)
        original = robustness(members, prefix, gap_metrics, who="ref_original.")
        for attack in dict.fromkeys(row_labels.dropna()):
            rows = row_labels == attack
            mine = rows.reindex(own.index)
            per_seed = _per_seed(figure[mine], own[mine], labels[mine])
            stats = {label: interval(per_seed.loc[label]) for label in per_seed.index}
            stats[ORIGINAL] = interval(_distinct_per_seed(original[rows], members[rows]))
            stats[RETRAIN] = _exact_zero(members.loc[rows, "_replicate"].drop_duplicates())
            found[attack] = pd.DataFrame(stats).T.reindex(index)
    return found


def _oracles_per_seed(members: pd.DataFrame, gap_metrics: list[str]) -> int:
    """The most distinct oracles (their gap metrics' values, rounded) one replicate's rows were scored against."""
    refs = [f"ref_oracle.{m}" for m in gap_metrics if f"ref_oracle.{m}" in members]
    if not refs:
        return 1
    values = members[refs].astype(float).round(6).assign(_r=members["_replicate"]).dropna(subset=refs, how="all")
    return int(values.drop_duplicates().groupby("_r").size().max()) if len(values) else 1


def board(members: pd.DataFrame, setting: dict, metrics: list[str]) -> Board:
    """One setting's rows (of `prepared`) → its Board. `metrics`: the frame's metric names (attrs["metrics"])."""
    members, collapsed = latest_runs(members)
    gap_metrics = [c[len("gap."):] for c in members if c.startswith("gap.") and members[c].notna().any()]
    # A stream's cost is the whole stream's (cum_RTE_s), against retraining at every step (the oracle's cum_RTE_s).
    stream = not pd.isna(setting.get("scenario"))
    clock = "cum_RTE_s" if stream and "cum_RTE_s" in members and members["cum_RTE_s"].notna().any() else "RTE_s"
    if clock == "RTE_s" and "rte_relative" in members:
        relative = members["rte_relative"]  # the run's own figure: it knows whether CPU or wall seconds compare
    elif clock in members and f"ref_oracle.{clock}" in members:
        relative = members[clock].astype(float) / members[f"ref_oracle.{clock}"].astype(float)
    else:
        relative = pd.Series(np.nan, index=members.index)
    own = members[members["method"] != ORACLE]
    labels = configuration_labels(own)
    entries = pd.concat([_references(members, gap_metrics, clock),
                         _methods(own, labels, clock, relative[own.index])])
    robust = _robustness(members, own, labels, gap_metrics, metrics, entries.index)
    figures = {key: pd.DataFrame({a: robust[a][key].astype(float) for a in robust}, index=entries.index)
               for key in ("mean", "half", "n")}
    sources = sorted({Path(str(s)).name for s in members["source"].dropna()}) if "source" in members else []
    return Board(setting, gap_metrics, entries, list(robust), figures["mean"], figures["half"], figures["n"], sources,
                 _oracles_per_seed(members, gap_metrics), collapsed)


def boards(frame: pd.DataFrame) -> tuple[list[Board], list[tuple[dict, int]]]:
    """Every setting of `frame` (from `unlearn.results.load`) → its Board, in order of appearance; and the settings
    that cannot be ranked (no row has an Avg. Gap: runs without an oracle), as (setting, rows). A stream is ranked
    at its last step (the setting then names it as `step`). Rows of tuning trials (`trial`: the method on a
    validation request, docs/tuning.md) are left out. Raises UnlearnError when no row has an Avg. Gap."""
    if "avg_gap" not in frame or frame["avg_gap"].isna().all():
        raise UnlearnError("no result row has an Avg. Gap (avg_gap) to rank by: the runs had no oracle "
                           "(e.g. scenario.oracle=false); rank runs that were compared with a retrained model")
    if "trial.request" in frame:  # a tuning's trials: scored on a validation request, not results to rank
        frame = frame[frame["trial.request"].isna()]
    frame, keys = prepared(frame)
    found, unranked = [], []
    for values, members in frame.groupby(keys, sort=False, dropna=False):
        setting = dict(zip(keys, values))
        if members["step"].notna().any():
            last = members["step"].max()
            members = members[members["step"] == last]
            setting["step"] = int(last)
        if members["avg_gap"].isna().all():
            unranked.append((setting, len(members)))
            continue
        found.append(board(members, setting, frame.attrs["metrics"]))
    return found, unranked
