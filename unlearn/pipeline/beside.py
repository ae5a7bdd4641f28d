"""The original trained in a second Python process beside the oracle (`parallel_training`).

Small models use a second thread poorly (t2i_tiny's step: 157 ms on one thread, 128 ms on two), so two models on
one thread each finish sooner than one after another on two. Each process trains on the run's `threads`, so the
original is the model the run would train alone (same code, seeds and thread count: the same cache key), and the
choice changes only how long the run takes. The process is a fresh interpreter (`CHILD`), not a
multiprocessing child, which would re-run the calling script's top level.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from omegaconf import OmegaConf

from unlearn.pipeline.rules import first_reason
from unlearn.pipeline.store import EpochCallback, ModelStore, Payload

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Experiment

log = logging.getLogger("unlearn")
# Below this many training FLOPs (about 10-20 s of one core) the second process, which takes seconds to start, does
# not pay: on digits (9e10) it made the default run 19.5 s instead of 11.4 s.
BESIDE_MIN_FLOP = 5e11
# The second process: python -c CHILD <job dir>
CHILD = ("import sys; from pathlib import Path; from unlearn.pipeline.beside import train_original; "
         "train_original(Path(sys.argv[1]))")


class Beside:
    """Whether and how `store`'s original trains in a second process while this one trains the oracle."""

    def __init__(self, store: ModelStore):
        self.store = store
        self._running: dict[str, Any] = {}  # the process training an original, by the original's key

    def why_not(self, model_seed: int) -> str | None:
        """Why `model_seed`'s original is not trained beside the oracle; None when it is."""
        store, cfg = self.store, self.store.cfg
        threads, cores = store.runtime.threads, available_cores()
        return first_reason([
            (lambda: cfg.get("parallel_training", "auto") is False, "parallel_training=false"),
            (lambda: store.runtime.device.type != "cpu", "not on a CPU"),
            (lambda: store.runtime.world_size > 1, "a data-parallel launch"),
            (lambda: cores < 2 * threads, f"{cores} core{'s' * (cores > 1)} for two processes of {threads} "
                                          f"thread{'s' * (threads > 1)}"),
            (lambda: bool(store.checkpoints), "a published original or oracle"),
            (store.builds_own_original, "the method builds its own original"),
            (lambda: store.request.builder.needs_original, "the forget set depends on the original"),
            (lambda: store.pruner is not None, "pruning: the oracle takes the original's masks"),
            (lambda: store.stack.member(model_seed), "a stacked population member"),
            (lambda: self._original_or_oracle_cached(model_seed), "the original or the oracle is cached"),
        ]) or self._short_training(model_seed)

    def _original_or_oracle_cached(self, model_seed: int) -> bool:
        """Whether the dense original or the oracle of `model_seed` is cached (for a forget set that does not
        depend on the original, chosen here if it was not yet)."""
        self.store.request.forget_set(None, None)
        cache = self.store.cache
        return cache.contains(self.store.dense_original_key(model_seed)) or \
            cache.contains(self.store.oracle_key(model_seed, None))

    def _short_training(self, model_seed: int) -> str | None:
        """With parallel_training=auto, why the original's training is too short to pay for a second process (its
        start-up costs seconds); None when it is long enough. Judged by an estimate of its FLOPs, not by timing, so
        the same config on any machine makes the same choice (and the same numbers: threads change rounding)."""
        store = self.store
        if store.cfg.get("parallel_training", "auto") is True:
            return None
        flop = store.training_flop()[1]
        if flop < BESIDE_MIN_FLOP:
            return f"a short training ({flop:.1e} FLOP < {BESIDE_MIN_FLOP:.0e}; parallel_training=true forces it)"
        return None

    @contextlib.contextmanager
    def original_beside_oracle(self, model_seed: int) -> Iterator[bool]:
        """Start training `model_seed`'s original in a second process on the run's threads while this one trains the
        oracle, and yield True; yield False (nothing started) when `why_not` gives a reason."""
        if self.why_not(model_seed) is not None:
            yield False
            return
        store = self.store
        key = store.dense_original_key(model_seed)
        threads = store.runtime.threads
        # The original's lock for as long as the second process trains it: a job racing for the same original
        # waits for it and loads it instead of training it again (the oracle's lock is always taken after it).
        with store.cache.lock(key), tempfile.TemporaryDirectory(prefix="unlearn-original-") as tmp:
            if store.cache.contains(key):  # another job made it while this one waited
                yield False
                return
            job = Path(tmp)
            torch.save({"config": OmegaConf.to_container(store.cfg, resolve=True), "cache_root": str(store.cache.root),
                        "cache_enabled": store.cache.enabled, "model_seed": model_seed, "threads": threads},
                       job / "job.pt")
            package_root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
            with open(job / "stderr.txt", "w") as stderr:
                process = subprocess.Popen([sys.executable, "-c", CHILD, str(job)], env=env,
                                           stdout=subprocess.DEVNULL, stderr=stderr)
            self._running[key] = process, job
            log.info("the original trains in a second process while the oracle trains here (%d thread%s each)",
                     threads, "s" * (threads > 1))
            try:
                yield True
            finally:
                self._running.pop(key, None)
                if process.poll() is None:
                    process.kill()
                    process.wait()

    def running(self, key: str) -> bool:
        return key in self._running

    def payload(self, key: str, on_epoch: EpochCallback | None, train_here: Callable[[], Payload]) -> Payload:
        """The original trained in the second process (waits for it); its epochs are reported now. If that process
        failed, the original trains here (`train_here`), which raises the error again if it is the training's own."""
        process, job = self._running.pop(key)
        self._wait(process, job)
        if process.wait() != 0 or not (job / "result.pt").exists():
            tail = (job / "stderr.txt").read_text(errors="replace").strip().splitlines()[-3:]
            log.warning("the original's second process failed (exit %s: %s); training it here", process.returncode,
                        " / ".join(tail) or "no output")
            return train_here()
        result = torch.load(job / "result.pt", map_location="cpu", weights_only=False)
        for stage, epoch, loss in result["epochs"] if on_epoch is not None else ():
            on_epoch(stage, epoch, loss)
        return result["payload"]


    def _wait(self, process: subprocess.Popen, job: Path) -> None:
        """Wait for the second process, with a bar of the epochs it has finished (it writes one line per epoch)."""
        from tqdm.auto import tqdm

        if process.poll() is not None:
            return
        log.info("waiting for the original's second process")
        progress = job / "epochs.txt"
        with tqdm(total=self.store.recipe.epochs, desc="original (second process)", leave=False, disable=None) as bar:
            while process.poll() is None:
                done = len(progress.read_text().splitlines()) if progress.exists() else 0
                bar.update(done - bar.n)
                time.sleep(0.5)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def train_original(job: Path) -> None:
    """The second process: train the original that `job`/job.pt describes and save {payload, epochs as (stage,
    epoch, loss)} to `job`/result.pt."""
    from unlearn.cache import Cache
    from unlearn.pipeline.experiment import Experiment

    spec = torch.load(job / "job.pt", weights_only=False)
    experiment: Experiment = Experiment(OmegaConf.create({**spec["config"], "threads": spec["threads"]}),
                                        Cache(spec["cache_root"], enabled=spec["cache_enabled"]))
    epochs: list[tuple[str, int, float]] = []

    def on_epoch(stage: str, epoch: int, loss: float) -> None:
        epochs.append((stage, epoch, loss))
        with open(job / "epochs.txt", "a") as progress:  # the parent's progress bar reads it
            progress.write(f"{epoch}\n")

    payload = experiment.models.train(spec["model_seed"], experiment.data()[0].train, "original", on_epoch)
    torch.save({"payload": payload, "epochs": epochs}, job / "result.pt")
