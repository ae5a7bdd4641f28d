"""Where and how tensors run: device, precision, memory format, and seeded generators."""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unlearn.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


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

    @classmethod
    def from_config(cls, device: str = "auto", precision: str = "auto", channels_last: bool | str = "auto",
                    threads: int | None = None) -> "Runtime":
        if threads is not None:
            if int(threads) < 1:
                raise ConfigError(f"threads must be >= 1 (or null for torch's default), got {threads}")
            torch.set_num_threads(int(threads))
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
        return cls(device=dev, precision=precision, channels_last=bool(channels_last), rank=rank, world_size=world_size)

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


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
