"""Where and how tensors run: device, precision, memory format, and seeded generators."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from unlearn.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
@functools.lru_cache(maxsize=None)
def default_threads() -> int:
    """torch's own thread count on this machine (its default: the cores it may use), read once at import, before a
    run changes it. A function, not a module constant: a code digest (codehash) folds constants' values in, and the
    machine's core count must not enter the cache keys of stages whose code reads it."""
    return torch.get_num_threads()


default_threads()
#: threads=auto: a training step below this many FLOP runs on one thread. Tiny models are overhead-bound and a second
#: thread only adds contention (measured: the default digits run took 47.9 s on a busy 2-core machine with torch's
#: default threads, 10.5 s on one; t2i_tiny's 6e9-FLOP step took 157 ms on one thread, 128 ms on two, idle).
ONE_THREAD_MAX_STEP_FLOP = 1e10


@functools.lru_cache(maxsize=1)
def cpu_kind() -> str:
    """torch's CPU kernels (AVX2, AVX512, ...), the CPU vendor and model name, e.g. "AVX2 AuthenticAMD AMD EPYC
    9B14": what a CPU run's rounding follows besides the torch build and thread count (measured: the same seed
    trains another model on another CPU kind)."""
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = lambda name: next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith(name)), "")  # noqa: E731
    return " ".join(filter(None, [torch.backends.cpu.get_cpu_capability(), field("vendor_id"), field("model name")]))


def derive_seed(seed: int, *names: str) -> int:
    """A stable per-stage seed, so stages draw independent but reproducible random streams."""
    digest = hashlib.blake2b("/".join([str(seed), *names]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    # Data-parallel processes under `accelerate launch` (or torchrun): this one's index and how many there are.
    rank: int = 0
    world_size: int = 1
    # The torch CPU threads that train and evaluate here (they change a CPU run's rounding, so its numbers).
    threads: int = field(default_factory=default_threads)

    @classmethod
    def from_config(cls, device: str = "auto", precision: str = "auto", channels_last: bool | str = "auto",
                    threads: int | str | None = None) -> "Runtime":
        """`threads`: an int, null (torch's default: every core) or "auto" (left at torch's default here; the
        Experiment then calls `use_threads(auto_threads(...))`, which depends on the config only)."""
        if threads not in (None, "auto"):
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise ConfigError(f"threads must be auto, null (torch's default) or an int >= 1, got {threads!r}")
        count = default_threads() if threads in (None, "auto") else int(threads)
        torch.set_num_threads(count)
        rank, world_size = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched data-parallel: accelerate sets up the processes
            from accelerate import PartialState

            state = PartialState(cpu=device == "cpu")  # gloo between CPU processes, else NCCL on one GPU each
            rank, world_size = state.process_index, state.num_processes
            if device == "auto":
                device = str(state.device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device={device!r} is not a torch device (try auto, cpu, cuda, cuda:1)") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but CUDA is not available here; use device=cpu")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r} is not one of {PRECISIONS}")
        if precision == "auto":  # bf16 autocast where it is fast; CPU stays exact fp32
            precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if channels_last == "auto":
            channels_last = dev.type == "cuda"
        return cls(device=dev, precision=precision, channels_last=bool(channels_last), rank=rank, world_size=world_size,
                   threads=count)

    def use_threads(self, count: int) -> None:
        self.threads = int(count)
        torch.set_num_threads(self.threads)

    @property
    def key_threads(self) -> int | None:
        """The thread count a trained model's cache key holds: on a CPU it changes the model; elsewhere not."""
        return self.threads if self.device.type == "cpu" else None

    @property
    def is_main(self) -> bool:
        """Whether this process writes results (the only one, or rank 0 of a data-parallel launch)."""
        return self.rank == 0

    def average(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its mean over the data-parallel processes (one all-reduce)."""
        if self.world_size == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every process (itself when not launched data-parallel)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model = model.to(memory_format=torch.channels_last)
        return model

    def generator(self, seed: int, *stage: str) -> torch.Generator:
        """A CPU generator for one stage: index permutations and labels are drawn on the CPU so that the
        same seed gives the same draws on every device."""
        return torch.Generator().manual_seed(derive_seed(seed, *stage))


class Clock(NamedTuple):
    """A stage's time in seconds: wall clock and this process's CPU time (`+` adds both)."""
    wall: float
    cpu: float

    def __add__(self, other: "Clock") -> "Clock":  # type: ignore[override]
        return Clock(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: "Clock") -> "Clock":
        return Clock(self.wall - other.wall, self.cpu - other.cpu)

    @classmethod
    def of(cls, payload: dict, prefix: str = "") -> "Clock":
        """A cached payload's `prefix`seconds and `prefix`cpu_seconds (NaN where it has none)."""
        nan = float("nan")
        return cls(float(payload.get(f"{prefix}seconds", nan)), float(payload.get(f"{prefix}cpu_seconds", nan)))


class Stopwatch:
    """`with Stopwatch() as clock: ...`, then `clock.wall` and `clock.cpu` in seconds: wall-clock time and this
    process's CPU time (every thread's; `time.process_time`). CPU time moves less with the machine's load than wall
    time does, so RTE / Retrain compares like with like on a CPU (docs/results.md, "Run time, threads and determinism")."""

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self.wall = self.cpu = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    @property
    def clock(self) -> Clock:
        return Clock(self.wall, self.cpu)

    def payload(self, prefix: str = "") -> dict[str, float]:
        """{`prefix`seconds: wall, `prefix`cpu_seconds: cpu}, as the cached payloads hold them."""
        return {f"{prefix}seconds": self.wall, f"{prefix}cpu_seconds": self.cpu}


def auto_threads(device: torch.device, step_flop: Callable[[], float]) -> int:
    """threads=auto: 1 on a CPU when one training step costs under ONE_THREAD_MAX_STEP_FLOP (every embedded default
    model), else torch's default. A function of the config (through `step_flop`, an estimate), never of the machine's
    load, so the same command gives the same numbers wherever its models are small."""
    if device.type != "cpu":
        return default_threads()
    return 1 if step_flop() < ONE_THREAD_MAX_STEP_FLOP else default_threads()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
