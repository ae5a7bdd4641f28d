"""Before/after tables of the robustness attacks (issue 29; results/robustness.md): for each attack setting in a
table.jsonl (rows grouped by the attack's config), the original, the oracle and each method, mean ± std over
seeds of a metric before the attack and of its attacked counterpart, and the position of each model between
the oracle and the original before and after the attack:

    R = (m(θ) − m(θr)) / (m(θo) − m(θr))     (0: as the oracle, 1: as the original)

computed per seed with that seed's original and oracle, attacked alike (R after the attack uses the attacked
original and oracle). A method whose R jumps from near 0 to near 1 forgot only in appearance.

    python benchmarks/robustness_table.py ROWS.jsonl METRIC ATTACKED [UTILITY ATTACKED_UTILITY]
    python benchmarks/robustness_table.py /tmp/rob/robust_facts/table.jsonl forget_prob quantize.forget_prob \\
        retain_prob quantize.retain_prob

ATTACKED may name the figure of a probe (`logit_lens.prob`, `probe.acc`, `fewshot.forget_prob`); rows whose
attack has no such key are skipped. `prefix.*` in ATTACKED is replaced by each row's attack prefix.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

from unlearn.report.compare import load_rows
from unlearn.report.tables import markdown


def _setting(row: dict) -> str:
    attack = dict(row.get("config", {}).get("attack") or {})
    target = str(attack.pop("_target_", "none")).rsplit(".", 1)[-1]
    attack.pop("depth", None)
    return target + " " + json.dumps(attack, sort_keys=True)


def _cell(values: list[float]) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return f"{np.nanmean(v):.2f} ± {np.nanstd(v):.2f}" if np.isfinite(v).any() else "nan"


def _position(m: float | None, original: float | None, oracle: float | None) -> float:
    if None in (m, original, oracle) or not np.isfinite([m, original, oracle]).all() or original == oracle:
        return float("nan")
    return (m - oracle) / (original - oracle)


def tables(rows: list[dict], metric: str, attacked: str, utility: tuple[str, str] | None = None) -> str:
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_setting[_setting(r)].append(r)
    out = []
    for setting, group in sorted(by_setting.items()):
        key = {"met": metric, "att": attacked}
        models: dict[str, list[dict]] = defaultdict(list)
        for r in group:
            ref = r["reference"]
            if key["att"] not in r["metrics"] and key["att"] not in ref["original"]:
                continue
            entries = {"original": ref["original"], "oracle (retrain)": ref["oracle"]}
            if r["method"] != "retrain":
                entries[r["method"]] = r["metrics"]
            for name, m in entries.items():
                if name in ("original", "oracle (retrain)") and any(x["seed"] == r["seed"] for x in models[name]):
                    continue
                models[name].append({"seed": r["seed"], "m": m, "o": ref["original"], "r": ref["oracle"]})
        if not models:
            continue
        head = ["model", "n", metric, attacked, "R before", "R after"]
        if utility:
            head += list(utility)
        body = []
        for name, entries in models.items():
            line = [name, len(entries), _cell([e["m"].get(metric) for e in entries]),
                    _cell([e["m"].get(attacked) for e in entries]),
                    _cell([_position(e["m"].get(metric), e["o"].get(metric), e["r"].get(metric)) for e in entries]),
                    _cell([_position(e["m"].get(attacked), e["o"].get(attacked), e["r"].get(attacked)) for e in entries])]
            if utility:
                line += [_cell([e["m"].get(u) for e in entries]) for u in utility]
            body.append(line)
        out.append(f"attack: {setting}\n\n" + markdown(head, body))
    return "\n\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(tables(load_rows(args[0]), args[1], args[2], tuple(args[3:5]) if len(args) >= 5 else None))
