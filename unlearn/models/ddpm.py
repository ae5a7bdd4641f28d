"""A small class-conditional DDPM: a diffusers `UNet2DModel` that predicts the noise ε(x_t, t, c).

The class embedding has one extra id, the null class, so that one network gives both the conditional and
the unconditional prediction that classifier-free guidance mixes. The noise schedule and the rate at which
training drops the class to the null class live here too: they define what the weights mean, so they are
part of the model config, and with it of the cache key of every trained model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, Range

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class ClassConditionalDDPM(nn.Module):
    knobs = {"num_classes": Range(2, integer=True), "in_channels": COUNT, "sample_size": Range(4, integer=True),
             "layers_per_block": COUNT, "norm_num_groups": COUNT, "num_train_timesteps": Range(2, integer=True),
             "cond_dropout": Range(0, 1, high_open=True)}

    def __init__(self, num_classes: int, in_channels: int = 1, sample_size: int = 16,
                 block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1, norm_num_groups: int = 8,
                 mid_attention: bool = False, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 cond_dropout: float = 0.1):
        super().__init__()
        channels = tuple(int(c) for c in block_out_channels)
        if int(num_classes) < 2:
            raise ConfigError(f"a class-conditional DDPM needs at least 2 classes, got num_classes={num_classes}")
        if not channels or any(c % norm_num_groups for c in channels):
            raise ConfigError(f"model.block_out_channels={list(channels)} must be non-empty multiples of "
                              f"model.norm_num_groups={norm_num_groups}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"model.beta_schedule={beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if not 0 <= cond_dropout < 1:
            raise ConfigError(f"model.cond_dropout must lie in [0, 1), got {cond_dropout}")
        if num_train_timesteps < 2:
            raise ConfigError(f"model.num_train_timesteps must be at least 2, got {num_train_timesteps}")
        self.num_classes = int(num_classes)
        self.null_class = self.num_classes
        self.sample_shape = (int(in_channels), int(sample_size), int(sample_size))
        self.cond_dropout = float(cond_dropout)
        self.schedule = {"num_train_timesteps": int(num_train_timesteps), "beta_schedule": beta_schedule}
        self.noise_scheduler = DDPMScheduler(**self.schedule)
        self.unet = UNet2DModel(
            sample_size=int(sample_size), in_channels=int(in_channels), out_channels=int(in_channels),
            block_out_channels=channels, layers_per_block=int(layers_per_block), norm_num_groups=int(norm_num_groups),
            down_block_types=("DownBlock2D",) * len(channels), up_block_types=("UpBlock2D",) * len(channels),
            add_attention=bool(mid_attention), num_class_embeds=self.num_classes + 1,
        )

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule["num_train_timesteps"]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ε predicted for noisy images `x_t` at timesteps `t` under classes `y` (`null_class`: unconditional)."""
        return self.unet(x_t, t, class_labels=y).sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.noise_scheduler.add_noise(x0, noise, t)

    def sampler(self, steps: int) -> DDIMScheduler:
        """A deterministic DDIM sampler (η = 0) over `steps` of this model's training schedule."""
        scheduler = DDIMScheduler(**self.schedule)
        scheduler.set_timesteps(int(steps))
        return scheduler
