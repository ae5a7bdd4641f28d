"""Reading a committed table and rebuilding, for each of its rows, the one `python run.py` command that made it.

A row's `command` may be a sweep (`python run.py -m method=ga,rl seed=0,1,2 ...`): a config group's choice is the
one whose composed config is closest to the row's recorded `config` (`distance_of`), any other swept key's value is
the row's config value. Nothing here runs anything; composition failures become `Unreproducible`."""
from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from unlearn.errors import BadInputError

#: Overrides a rerun replaces or drops: where it writes, what it keeps, extra sinks, population job stages.
DROPPED = ("results_dir", "table_path", "cache_dir", "save_model", "logger", "stage", "member")


class Unreproducible(BadInputError):
    """A committed row whose command cannot be rerun with this code (no command, a key or choice that no longer
    composes, a device this machine lacks)."""


@dataclass
class Committed:
    """One committed row: where it came from (`source` stem, `index`: 0-based line of the .jsonl) and the row."""
    source: str
    index: int
    row: dict[str, Any]
    label: str = ""


@dataclass
class Run:
    """One command to rerun and the committed rows it reproduces."""
    overrides: tuple[str, ...]
    rows: list[Committed] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)


# ---- reading a committed table -----------------------------------------------------------------------------
def load_table(path: str | Path) -> list[Committed]:
    """The rows of a committed `.jsonl`, or of the `.jsonl` files beside a `.md` table that its text names.
    BadInputError when the file is missing, unreadable, or (a .md) names no rows file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such table (give a results/<table>.md or .jsonl)")
    if path.suffix == ".jsonl":
        files = [path]
    elif path.suffix == ".md":
        named = dict.fromkeys(Path(m).name for m in re.findall(r"[\w./-]+\.jsonl", path.read_text()))
        files = [path.parent / name for name in named if (path.parent / name).is_file()]
        if not files:
            raise BadInputError(f"{path} names no rows file (.jsonl) beside it, so it records no runs to rerun "
                                f"(a benchmark's figures: rerun the command the table shows)")
    else:
        raise BadInputError(f"{path}: reproduce reads a .md or .jsonl table, not {path.suffix or 'a file without suffix'}")
    many = len(files) > 1
    rows = []
    for file in files:
        lines = [line for line in file.read_text().splitlines() if line.strip()]
        for index, line in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{file}: row {index} is not JSON ({exc})") from None
            prefix = f"{file.stem}:" if many else ""
            step = f" step {row['step']}" if row.get("step") is not None else ""
            rows.append(Committed(file.stem, index, row,
                                  f"{prefix}{index} {row.get('method', '?')} s{row.get('seed', '?')}{step}"))
    if not rows:
        raise BadInputError(f"{path}: no rows")
    return rows


def select(rows: list[Committed], spec: str | None = None, seeds: Sequence[int] | None = None,
           methods: Sequence[str] | None = None) -> list[Committed]:
    """The rows `spec` names ('0,3,5-7'; 'stem:3' where a .md reads several files) with a seed in `seeds` and a
    method in `methods` (None: any). BadInputError on a malformed spec, a row out of range or an empty selection."""
    chosen = rows
    if spec:
        sources = list(dict.fromkeys(r.source for r in rows))
        wanted: set[tuple[str, int]] = set()
        for item in spec.split(","):
            match = re.fullmatch(r"\s*(?:([\w.-]+):)?(\d+)(?:-(\d+))?\s*", item)
            if not match:
                raise BadInputError(f"--rows {spec!r}: give 0-based row numbers and ranges, e.g. 0,3,5-7"
                                    f"{' (as stem:N with several rows files: ' + ', '.join(sources) + ')' if len(sources) > 1 else ''}")
            source, first, last = match.group(1), int(match.group(2)), int(match.group(3) or match.group(2))
            if source is None and len(sources) > 1:
                raise BadInputError(f"--rows {item.strip()}: the table reads {', '.join(sources)}; name one, e.g. "
                                    f"{sources[0]}:{first}")
            source = source or sources[0]
            count = sum(r.source == source for r in rows)
            if source not in sources or last >= count or first > last:
                raise BadInputError(f"--rows {item.strip()}: {source} has rows 0-{count - 1}" if source in sources else
                                    f"--rows {item.strip()}: no rows file {source} (valid: {', '.join(sources)})")
            wanted.update((source, i) for i in range(first, last + 1))
        chosen = [r for r in chosen if (r.source, r.index) in wanted]
    if seeds is not None:
        chosen = [r for r in chosen if r.row.get("seed") in set(seeds)]
    if methods is not None:
        chosen = [r for r in chosen if r.row.get("method") in set(methods)]
    if not chosen:
        raise BadInputError(f"no rows match the selection (seeds in the table: "
                            f"{sorted({r.row.get('seed') for r in rows}, key=str)}; methods: "
                            f"{', '.join(sorted({str(r.row.get('method')) for r in rows}))})")
    return chosen


# ---- rebuilding one run's command --------------------------------------------------------------------------
def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {'a.b.c': value} (lists and empty dicts stay values)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(recorded: dict, composed: dict, ignore: Iterable[str] = DROPPED) -> list[str]:
    """'key: recorded → composed' for each leaf where two configs differ (keys under `ignore` left out). A key only the
    composed config has is a newer harness's addition at its default (method.eval_every, tuning.*), not a change."""
    a, b = leaves(recorded), leaves(composed)
    skip = tuple(ignore)
    missing = "(absent)"
    return [f"{k}: {a.get(k, missing)} → {b.get(k, missing)}" for k in sorted(set(a) | set(b))
            if k.split(".")[0] not in skip and k in a and a[k] != b.get(k, missing)]


def distance_of(recorded: dict, composed: dict) -> tuple[int, int, int]:
    """How far a composed config is from a recorded one, most telling first: (differing `_target_`s, other values
    that differ, keys on one side only). A newer harness adds keys with defaults (the third count) far more often
    than it changes what a choice builds, so a group choice is told by its classes first."""
    a, b = leaves(recorded), leaves(composed)
    skip = DROPPED
    shared = [k for k in set(a) & set(b) if k.split(".")[0] not in skip and a[k] != b[k]]
    targets = sum(k.rsplit(".", 1)[-1] == "_target_" for k in shared)
    one_sided = sum(k.split(".")[0] not in skip for k in set(a) ^ set(b))
    return targets, len(shared) - targets, one_sided


def _select_key(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _literal(value: Any) -> str:
    """A config value as Hydra override text."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_literal, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


class Planner:
    """Rebuilds each row's single-run overrides; composes each distinct one once."""

    def __init__(self, conf_dir: Path | None = None) -> None:
        from unlearn.config import CONF_DIR

        self.conf_dir = conf_dir or CONF_DIR
        self._composed: dict[tuple, dict | Exception] = {}
        self._parsed: dict[tuple[str, ...], list | Exception] = {}

    def compose(self, overrides: Sequence[str], check: bool = True) -> dict:
        """The resolved config `python run.py <overrides>` runs (with `check`, its nodes range-checked as the run
        would); Unreproducible with the first line of the error where it does not compose."""
        key = (tuple(overrides), check)
        if key not in self._composed:
            from unlearn.config import check_node, compose_config, plain

            try:
                cfg = compose_config(*overrides)
                if check:
                    check_node(cfg)
                self._composed[key] = plain(cfg)
            except Exception as exc:  # noqa: BLE001 - any composition failure makes the row unreproducible
                self._composed[key] = exc
        found = self._composed[key]
        if isinstance(found, Exception):
            raise Unreproducible(str(found).strip().splitlines()[0] if str(found).strip() else type(found).__name__)
        return found

    def _checked(self, args: list[str]) -> list:
        """The recorded overrides parsed, after `check_choices` (every choice and key still exists); memoised."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from unlearn.config import check_choices

        key = tuple(args)
        if key not in self._parsed:
            try:
                check_choices(args, self.conf_dir)
                self._parsed[key] = OverridesParser.create().parse_overrides(args)
            except Exception as exc:  # noqa: BLE001 - a ConfigError or Hydra's parse error: it no longer composes
                self._parsed[key] = Unreproducible(str(exc).strip().splitlines()[0])
        if isinstance(self._parsed[key], Exception):
            raise self._parsed[key]
        return self._parsed[key]

    def overrides_of(self, row: dict[str, Any]) -> tuple[tuple[str, ...], list[str]]:
        """(the overrides of the one run that made `row`, how the config they compose differs from the row's)."""
        from hydra.core.override_parser.types import OverrideType

        command, config = row.get("command"), row.get("config")
        if not command:
            raise Unreproducible("the row records no command")
        if not isinstance(config, dict):
            raise Unreproducible("the row records no config, so which run of its command it is is unknown")
        try:
            tokens = shlex.split(command)
        except ValueError as exc:
            raise Unreproducible(f"its command does not parse as shell words ({exc})") from None
        entry = next((i for i, t in enumerate(tokens) if Path(t).name == "run.py"), None)
        if entry is None:
            raise Unreproducible(f"its command is not a `python run.py ...` command: {command[:80]}")
        args = [t for t in tokens[entry + 1:] if t not in ("-m", "--multirun")]
        flags = [t for t in args if t.startswith("-")]
        if flags:
            raise Unreproducible(f"its command passes Hydra flags reproduce does not rerun: {' '.join(flags)}")
        parsed = self._checked(args)
        prefix = {OverrideType.CHANGE: "", OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}
        kept, groups, picked = [], [], []
        for o in parsed:
            name = o.key_or_group
            if name.split(".")[0].split("/")[0] in (*DROPPED, "hydra"):
                continue
            if not o.is_sweep_override():
                kept.append(o.input_line)
            elif (self.conf_dir / name).is_dir():
                groups.append((prefix[o.type] + name, list(o.sweep_string_iterator())))
            else:
                picked.append(f"{prefix[o.type]}{name}={self._value_of(o, config)}")
        chosen = self._group_choices(kept, groups, row) if groups else []
        overrides = [*kept, *chosen, *picked, *self._device_pin(row, config)]
        composed = self.compose(overrides)
        return tuple(overrides), config_changes(config, composed, ignore=(*DROPPED, "device"))

    @staticmethod
    def _value_of(o: Any, config: dict) -> str:
        """A non-group sweep's value in this row: the row's config value, as the sweep spells it."""
        key = o.key_or_group
        try:
            value = _select_key(config, key)
        except KeyError:
            raise Unreproducible(f"its config records no {key}, so which value of the sweep {o.input_line} it "
                                 f"ran is unknown") from None
        try:
            pairs = list(zip(o.sweep_iterator(), o.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - an interval sweep (Optuna) cannot be listed: take the value as recorded
            return _literal(value)
        for candidate, text in pairs:
            if _plain(candidate) == value:
                return text
        raise Unreproducible(f"its {key}={value!r} is none of the values of {o.input_line}")

    def _group_choices(self, kept: list[str], groups: list[tuple[str, list[str]]], row: dict) -> list[str]:
        """The choice of each swept config group whose composed config is closest to the row's (`distance_of`;
        the row's own label, e.g. its `method`, breaks a tie)."""
        scored = []
        errors = []
        for combo in itertools.product(*(choices for _, choices in groups)):
            texts = [f"{key}={choice}" for (key, _), choice in zip(groups, combo)]
            try:
                composed = self.compose([*kept, *texts], check=False)
            except Unreproducible as exc:
                errors.append(str(exc))
                continue
            distance = distance_of(row["config"], composed)
            labels = sum(row.get(key.lstrip("+~")) == choice for (key, _), choice in zip(groups, combo))
            scored.append((distance, -labels, texts))
        if not scored:
            raise Unreproducible(errors[0])
        scored.sort(key=lambda item: item[:2])
        if len(scored) > 1 and scored[0][:2] == scored[1][:2] and any(scored[0][0]):
            raise Unreproducible(f"its config matches {' '.join(scored[0][2])} and {' '.join(scored[1][2])} "
                                 f"equally, so which run of the sweep it is is unknown")
        return scored[0][2]

    @staticmethod
    def _device_pin(row: dict, config: dict) -> list[str]:
        """device=<type> where the row ran with device=auto: the device its environment records, so a CPU row
        reruns on a CPU anywhere. Unreproducible where the row needs CUDA and this machine has none."""
        recorded = str((row.get("environment") or {}).get("device") or "")
        configured = str(config.get("device") or "auto")
        kind = (recorded if configured == "auto" else configured).split(":")[0]
        if kind == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise Unreproducible(f"it ran on {recorded or configured} "
                                     f"({(row.get('environment') or {}).get('device_name', 'a GPU')}); this machine "
                                     f"has no CUDA device")
        return [f"device={kind}"] if configured == "auto" and recorded else []


def plan(rows: list[Committed], planner: Planner | None = None) -> tuple[list[Run], list[str]]:
    """The runs that reproduce `rows` (rows of one command and seed share one run: a sequence's steps) and, for
    each row that cannot be rerun, one line saying why."""
    planner = planner or Planner()
    runs: dict[tuple[str, ...], Run] = {}
    problems = []
    for committed in rows:
        try:
            overrides, changes = planner.overrides_of(committed.row)
        except Unreproducible as exc:
            problems.append(f"not reproducible: {committed.label}: {exc}")
            continue
        run = runs.setdefault(overrides, Run(overrides, config_changes=changes))
        run.rows.append(committed)
    return list(runs.values()), problems
