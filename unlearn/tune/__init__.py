"""`python -m unlearn tune method=M budget=N [overrides...] [--seeds 0,1,2] [--tune-seed 100] [--on validation|reported]
[--out DIR] [--experiment NAME] [--sampler-seed 0] [--write]`: equal-budget tuning (docs/tuning.md).

Every method gets the same N trials of Hydra's Optuna sweeper (TPE, seeded) over the search space its yaml declares
(`method.space`), each trial scored on the validation request of a tuning seed (`--tune-seed`, never one of the
reported `--seeds`): the trial is `python run.py tuning.trial=true seed=<tune seed> ...`, whose row's Avg. Gap (of the
best validation checkpoint under method.select=best_val) the sweeper minimises. The best configuration then runs on
the reported seeds, and every row it writes carries `tuned: {budget, space, best, best_value, validation, command}`.
`--on reported` tunes on the reported request at the first reported seed instead: "oracle tuning", the optimistic
protocol papers use, labelled so in the record. `--write` records the best values in conf/tuned/<data>/<method>.yaml
with the command that found them.

Everything that can be refused (a budget < 1, an empty or inverted range, no search space, eval_every beyond the
fewest epochs the space allows, a validation request that cannot be drawn, a tuning seed among the reported ones) is
one line and exit 2 before any trial runs. Exit 1 when a run fails.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from unlearn.config import CONF_DIR, check_choices, compose_config
from unlearn.errors import ConfigError, UnlearnError
from unlearn.protocol import Dimension, Protocol

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"validation": "validation request of a tuning seed (disjoint from the reported request and seeds)",
          "reported": "oracle tuning: the reported request at a reported seed (optimistic; the protocol papers use)"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `tune` to an argparse subparsers object (`python -m unlearn tune ...`)."""
    parser = subparsers.add_parser("tune", help="equal-budget tuning of a method on validation requests",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="budget=N and the run's Hydra overrides (method=..., data=...)")
    parser.add_argument("--seeds", default="0,1,2", help="the reported seeds the best configuration runs on")
    parser.add_argument("--tune-seed", type=int, default=100, help="the seed whose validation request trials score on")
    parser.add_argument("--on", choices=tuple(LABELS), default="validation",
                        help="validation (the protocol) or reported (oracle tuning, optimistic: labelled so)")
    parser.add_argument("--out", default="outputs", help="results_dir of the trials and the final runs")
    parser.add_argument("--experiment", default="tune", help="the final rows go to OUT/EXPERIMENT/table.jsonl, the "
                                                             "trials' to OUT/EXPERIMENT_trials/")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument("--write", action="store_true", help="record the best values in conf/tuned/<data>/<method>.yaml")
    parser.set_defaults(func=main)
    return parser


@dataclass
class Plan:
    """What a tune command runs, checked: the budget, the space, the seeds, and the two commands."""

    budget: int
    space: tuple[Dimension, ...]
    overrides: list[str]
    seeds: list[int]
    trial_seed: int
    on: str
    data: str
    method: str
    out: Path
    experiment: str
    sampler_seed: int

    @property
    def sweep_dir(self) -> Path:
        return self.out / f"{self.experiment}_trials" / f"{self.method}_sweep"

    def trials(self) -> list[str]:
        """The sweep: N trials of the sweeper over the space, each a `tuning.trial` run at the trial seed."""
        return [sys.executable, str(ROOT / "run.py"), "-m", *self.overrides, "hydra/sweeper=optuna",
                f"hydra.sweeper.n_trials={self.budget}", "hydra.sweeper.n_jobs=1", "hydra.sweeper.direction=minimize",
                f"hydra.sweeper.sampler.seed={self.sampler_seed}", f"hydra.sweep.dir={self.sweep_dir}",
                *[f"method.{d.name}={d.sweeper()}" for d in self.space],
                "tuning.trial=true", f"tuning.request={self.on}", f"seed={self.trial_seed}",
                f"results_dir={self.out}", f"experiment={self.experiment}_trials", "save_model=false"]

    def final(self, best: dict[str, Any], record: dict[str, Any]) -> list[str]:
        """The best configuration on the reported seeds, every row carrying the record. The record goes inline (a
        Hydra dict), so the command each row keeps reruns anywhere (`python -m unlearn reproduce`), file or not."""
        return [sys.executable, str(ROOT / "run.py"), "-m", *self.overrides,
                *[f"method.{k}={v}" for k, v in best.items()], f"seed={','.join(map(str, self.seeds))}",
                f"tuning.record={hydra_value(record)}", f"results_dir={self.out}", f"experiment={self.experiment}",
                "save_model=false"]


def hydra_value(value: Any) -> str:
    """A JSON-like value (dicts with identifier keys, lists, strings, numbers, booleans, None) in Hydra's override
    grammar, which parses it back to the same value."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        # Double-quoted: Hydra unescapes \" (and backslashes only before a quote); OmegaConf reads \${ as a literal ${.
        body = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', value).replace("${", "\\${")
        return '"' + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body) + '"'
    return repr(value)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what}={text!r} must be a whole number") from None


def plan(overrides: Sequence[str], seeds: str = "0,1,2", tune_seed: int = 100, on: str = "validation",
         out: str = "outputs", experiment: str = "tune", sampler_seed: int = 0) -> Plan:
    """Check a tune command and return what it runs; ConfigError (one line) on bad input, before anything trains."""
    from unlearn.pipeline import Experiment

    budgets = [o.split("=", 1)[1] for o in overrides if o.startswith("budget=")]
    if len(budgets) != 1:
        raise ConfigError("tune needs budget=N (the number of trials every method gets), once")
    budget = _int(budgets[0], "budget")
    if budget < 1:
        raise ConfigError(f"budget={budget} must be >= 1 (trials per method)")
    rest = [o for o in overrides if not o.startswith("budget=")]
    if any(o.startswith(("seed=", "tuning.")) for o in rest):
        raise ConfigError("tune sets seed= and tuning.* itself: give the reported seeds as --seeds and the trial "
                          "seed as --tune-seed")
    reported = [_int(s, "--seeds") for s in seeds.split(",") if s.strip()]
    if not reported:
        raise ConfigError("--seeds is empty; give the reported seeds, e.g. --seeds 0,1,2")
    trial_seed = tune_seed if on == "validation" else reported[0]
    if on == "validation" and tune_seed in reported:
        raise ConfigError(f"--tune-seed {tune_seed} is one of the reported seeds {reported}; tuning must use seeds "
                          f"disjoint from the reported ones")
    check_choices(rest)
    cfg = compose_config(*rest, "tuning.trial=true", f"tuning.request={on}", f"seed={trial_seed}")
    x = Experiment(cfg)  # every check a run makes, before anything trains
    protocol: Protocol = x.protocol
    if not protocol.space:
        raise ConfigError(f"method {x.method.name!r} declares no search space: add method.space to "
                          f"conf/method/<method>.yaml (e.g. {{lr: {{low: 1e-3, high: 1e-1, log: true}}}})")
    epochs = next((d for d in protocol.space if d.name == "epochs"), None)
    if protocol.eval_every is not None and protocol.eval_unit == "epoch" and epochs is not None and \
            not epochs.choices and protocol.eval_every > epochs.low:
        raise ConfigError(f"method.eval_every={protocol.eval_every} epochs is beyond the fewest epochs the space "
                          f"allows ({int(epochs.low)}); lower eval_every or raise method.space.epochs.low")
    if on == "validation":
        x.selection.check()
    return Plan(budget, protocol.space, rest, reported, trial_seed, on, str(cfg.data.name), _method_choice(rest),
                Path(out), experiment, sampler_seed)


def _method_choice(overrides: Sequence[str]) -> str:
    """The `method=` choice of the overrides, else the config's default (the conf/tuned file it names)."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("method=")]
    if chosen:
        return chosen[-1]
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]
    return next(d["method"] for d in defaults if isinstance(d, dict) and "method" in d)


NOTES_BEFORE = "# Notes kept from before the latest tuning (they may describe the values it replaced):"


def write_tuned(data: str, method: str, best: dict[str, Any], record: dict[str, Any], conf_dir: Path = CONF_DIR) -> Path:
    """conf/tuned/<data>/<method>.yaml with the best values over what it held (other keys kept), the record under
    `tuning.record` (so every row run with it says where its values came from) and the command in its header."""
    path = conf_dir / "tuned" / data / f"{method}.yaml"
    before = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    notes = [line for line in (path.read_text().splitlines() if path.is_file() else [])
             if line.startswith("#") and "@package" not in line and not line.startswith(("# tuned by", "# on "))]
    if notes and notes[0] != NOTES_BEFORE:  # the file's own words may describe the values this tuning replaced
        notes = [NOTES_BEFORE, *notes]
    content = dict(before or {})
    content["method"] = dict(content.get("method") or {}) | best
    content["tuning"] = {"record": record}
    header = ["# @package _global_", f"# tuned by: {record['command']}",
              f"# on {record['time']}: {record['budget']} trials, best validation Avg. Gap {record['best_value']:.4g}",
              *notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(content)))
    return path


def _run(command: list[str]) -> None:
    print("$ " + shlex.join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        raise UnlearnError(f"exit status {done.returncode}: {shlex.join(command[1:])}")


def main(args: argparse.Namespace) -> int:
    """Plan (refusing bad input: exit 2), run the trials, write tuned.json, run the best configuration on the reported
    seeds (exit 1 if a run fails), and with --write record it in conf/tuned."""
    command = "python -m unlearn tune " + shlex.join([
        *args.overrides, "--seeds", args.seeds, "--tune-seed", str(args.tune_seed), "--on", args.on, "--out", args.out,
        "--experiment", args.experiment, "--sampler-seed", str(args.sampler_seed), *(["--write"] if args.write else [])])
    try:
        p = plan(args.overrides, args.seeds, args.tune_seed, args.on, args.out, args.experiment, args.sampler_seed)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        _run(p.trials())
        # OmegaConf's YAML, as Hydra's: it reads 1e-05 as a number (PyYAML reads a string)
        found = OmegaConf.to_container(OmegaConf.load(p.sweep_dir / "optimization_results.yaml"))
        best = {k.removeprefix("method."): v for k, v in found["best_params"].items()}
        record = {"budget": p.budget, "space": {d.name: d.describe() for d in p.space}, "best": best,
                  "best_value": float(found["best_value"]), "sampler_seed": p.sampler_seed,
                  "validation": {"request": p.on, "seed": p.trial_seed, "label": LABELS[p.on]},
                  "command": command, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        target = p.out / p.experiment / f"tuned_{p.method}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=2) + "\n")
        print(f"best of {p.budget} trials ({p.on}): {best} (Avg. Gap {record['best_value']:.4g}); record: {target}")
        _run(p.final(best, record))
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.write:
        print(f"wrote {write_tuned(p.data, p.method, best, record)}")
    return 0
