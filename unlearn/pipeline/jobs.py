"""Population members as jobs of a Hydra multirun (README, "Populations and grids on a cluster").

The top-level `stage` key chooses what a run does:
- `all` (default): the run and its row; population members that are not cached are built in this process.
- `members`: build population member `member` (0..eval.oracles-1) into the cache — its original, the forget set, its
  oracle, the method's model made from that original and the member's statistics (`populations.Members`) — and
  write no row (the run dir gets `member.json`: what was built or found, and the time it took). One job per member:
  `python run.py -m stage=members member='range(0,N)' eval=population eval.oracles=N ... hydra/launcher=...`.
- `metrics`: the population run that only computes: refused before anything trains, naming the command that
  builds them, while a member is not cached.
Every job shares the cache (cache_dir= or $UNLEARN_CACHE on a shared folder); what two jobs both need (the forget
set, member 0's original) is built by the first, under the key's lock, and loaded by the others.
"""
from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from unlearn.cache import NotCached
from unlearn.config import target_of
from unlearn.errors import ConfigError
from unlearn.pipeline.experiment import Experiment
from unlearn.pipeline.populations import Members, member_seeds

log = logging.getLogger("unlearn")

STAGES = ("all", "members", "metrics")


@dataclass(frozen=True)
class Stage:
    """The run's `stage` and `member` keys, checked (ConfigError) before anything is built."""

    name: str
    member: int | None

    @classmethod
    def of(cls, cfg: DictConfig) -> "Stage":
        name, member = cfg.get("stage", "all"), cfg.get("member")
        if name not in STAGES:
            raise ConfigError(f"stage={name!r} is not a stage; valid: {', '.join(STAGES)}")
        if member is not None and (isinstance(member, bool) or not isinstance(member, int)):
            raise ConfigError(f"member={member!r} must be a member index (an integer)")
        n = int(cfg.eval.oracles)
        if name != "members" and member is not None:
            raise ConfigError(f"member={member} builds one population member and needs stage=members; drop member= "
                              f"for stage={name}")
        if name == "members" and member is None:
            raise ConfigError(f"stage=members needs member=<index> in 0..{n - 1} (eval.oracles={n}); one job per "
                              f"member: python run.py -m stage=members member='range(0,{n})' ...")
        if member is not None and not 0 <= member < n:
            raise ConfigError(f"member={member} is outside the population of eval.oracles={n}; valid: 0..{n - 1}")
        return cls(name, member)

    def check(self, experiment: Experiment) -> None:
        """What the stage needs of the composed experiment (ConfigError before anything trains)."""
        from unlearn.scenarios.single import Single

        if self.name == "all":
            return
        cfg = experiment.cfg
        if target_of(cfg.scenario) is not Single:
            raise ConfigError(f"stage={self.name} builds the population of one request; scenario="
                              f"{cfg.scenario.get('name', cfg.scenario._target_)} runs its populations itself: use "
                              f"stage=all")
        if not experiment.cache.enabled:
            raise ConfigError(f"stage={self.name} works through the cache (members are handed over there), but "
                              f"use_cache=false; drop it")
        if self.name == "members" and self.member > 0 and Members(experiment).stacked_method():
            raise ConfigError(f"this population runs the method on members 1..{experiment.n_models - 1} as one stacked "
                              f"computation (eval.stacked on a GPU), which a job per member cannot reproduce; add "
                              f"eval.stacked=false to the member jobs and to the population run")


def build_member(experiment: Experiment, index: int) -> dict[str, Any]:
    """Build member `index` of the experiment's population into its cache (nothing already cached is rebuilt);
    returns what was built: the member's seed and keys, which parts were cached, seconds spent, cache I/O."""
    x = experiment
    start = time.perf_counter()
    seed = member_seeds(x.seed, x.n_models)[index]
    art = x.prepare(None, seed)
    built = {"original": not art.timings.get("original_cached", True), "oracle": not art.timings.get("oracle_cached")}
    if x.n_models >= 2:  # a population of one has no member statistics: the run's own row computes everything
        _, cached = Members(x, x.splits()).build(art, index)
        built["member"] = not cached
    seconds = time.perf_counter() - start
    log.info("population member %d of %d (seed %d): built %s in %.1f s", index, x.n_models, seed,
             ", ".join(k for k, v in built.items() if v) or "nothing (all cached)", seconds)
    return {"member": index, "population": x.n_models, "model_seed": seed, "original_key": art.original_key,
            "oracle_key": art.oracle_key, "built": built, "seconds": seconds, "cache_io": dict(x.cache.io)}


def missing_members(experiment: Experiment) -> list[int]:
    """The population members not in the cache (member 0: its original, forget set and oracle; the others: also
    their record), found by loading what is cached and stopping at the first miss; nothing is trained."""
    x, members, missing = experiment, Members(experiment), []
    with x.cache.only_cached():
        for index, seed in enumerate(member_seeds(x.seed, x.n_models)):
            try:
                # A second process would train the original: only when neither it nor the oracle is cached.
                art = None if x.beside.why_not(seed) is None else x.prepare(None, seed)
            except NotCached:
                art = None
            if art is None or index > 0 and not x.cache.contains(members.key(art, index)):
                missing.append(index)
    return missing


def members_command(missing: list[int], overrides: list[str]) -> str:
    """The multirun that builds `missing` members with the run's own overrides."""
    contiguous = missing == list(range(missing[0], missing[-1] + 1)) and len(missing) > 2
    member = f"range({missing[0]},{missing[-1] + 1})" if contiguous else ",".join(map(str, missing))
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("stage", "member")]
    return shlex.join(["python", "run.py", "-m", "stage=members", f"member={member}", *kept])


def require_members(experiment: Experiment, overrides: list[str]) -> None:
    """stage=metrics: ConfigError naming the command that builds them when a population member is not cached."""
    missing = missing_members(experiment)
    if missing:
        raise ConfigError(f"stage=metrics computes a population from cached members, but member(s) "
                          f"{', '.join(map(str, missing))} of eval.oracles={experiment.n_models} are not in "
                          f"{experiment.cache.root}; build them first: {members_command(missing, overrides)}")
