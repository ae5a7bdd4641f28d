"""The Task interface: the seam between modalities (DESIGN.md).

A task knows its data's loss, how to give an input a wrong target, how to augment, how to train, and
how to evaluate. Methods and the pipeline speak only to this interface, so one method file serves
classifiers, language models and diffusion models alike.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

import torch
from torch import nn

from unlearn.data.forget import ForgetBuilder, ForgetSet
from unlearn.data.tensordata import Batch, DataBundle, TensorData
from unlearn.runtime import Runtime
from unlearn.training import OptimConfig, StackedModels, Streams, optimise, optimise_stacked

if TYPE_CHECKING:
    from pathlib import Path

    from unlearn.cache import Cache


@dataclass
class Splits:
    """What evaluation sees: the forget set, the retain set, and held-out data."""

    forget: TensorData
    retain: TensorData
    test: TensorData
    val: TensorData

    @classmethod
    def from_forget_set(cls, data: DataBundle, forget: ForgetSet) -> "Splits":
        test = data.test if forget.test_indices is None else data.test.subset(forget.test_indices)
        return cls(forget=data.train.subset(forget.indices),
                   retain=data.train.subset(forget.retain_indices(len(data.train))),
                   test=test, val=data.val)


class Task(ABC):
    kind: str = "task"
    #: metrics whose |method − oracle| gaps are averaged into Avg. Gap
    gap_metrics: tuple[str, ...] = ()
    #: metrics the ε score scales by (unlearned / oracle), e.g. retain and test accuracy
    utility_metrics: tuple[str, ...] = ()
    #: whether `example_statistics` is defined (needed for eval.oracles > 1: KLoM, LiRA, ε)
    has_example_statistics: bool = False
    #: false-positive rates at which membership attacks report their TPR beside the AUC (set from eval.low_fpr and
    #: the test split's size once the data is loaded: `unlearn.eval.rmia.low_fpr_levels`)
    low_fpr: tuple[float, ...] = (0.01,)
    #: whether `relabel` can make a stand-in target for forget examples (methods with `relabels` need it)
    can_relabel: bool = True
    relabel_note: str = ""
    #: whether models of this task may be trained stacked (`fit_stacked`): its loss and augmentation draw every
    #: random number from the member's own generator, none from torch's global RNG (shared by a stack)
    stackable: bool = False

    def check_forget(self, builder: ForgetBuilder) -> None:
        """Raise ConfigError if this task cannot evaluate forget sets of this kind (runs before any training)."""

    def setup(self, data: DataBundle, cache: "Cache", runtime: Runtime, seed: int) -> None:
        """Called once per run after the data is loaded: build (and cache) anything evaluation needs,
        such as a judge classifier. Most tasks need nothing."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-example losses, shape (B,). Randomness (noise, timesteps) comes from torch's global RNG,
        which the pipeline seeds at the start of every stage."""

    @abstractmethod
    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The same inputs with a wrong target (random other class, a refusal answer, another condition)."""

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Train-time augmentation of a batch (identity unless the task has one)."""
        return batch

    def fit(self, model: nn.Module, data: TensorData, recipe: OptimConfig, runtime: Runtime,
            generator: torch.Generator, desc: str = "fit",
            on_epoch: Optional[Callable[[str, int, float], None]] = None) -> nn.Module:
        """Train `model` on `data` by minimising the mean loss (the original and the oracles)."""
        self.init_model(model, data)
        optimise(model, self._fit_objective, Streams(retain=data, mode="retain"),
                 recipe, runtime, generator, augment=self.augment, desc=desc, on_epoch=on_epoch)
        return model

    def fit_stacked(self, models: list[nn.Module], data: TensorData, recipe: OptimConfig, runtime: Runtime,
                    generators: list[torch.Generator], desc: str = "fit",
                    on_epoch: Optional[Callable[[str, int, float], None]] = None) -> list[nn.Module]:
        """`fit` for N models at once (tasks with `stackable`): member i as `fit` with `generators[i]`."""
        for model in models:
            self.init_model(model, data)
        stack = StackedModels(models)
        optimise_stacked(stack, self._fit_objective, Streams(retain=data, mode="retain"), recipe, runtime, generators,
                         augment=self.augment, desc=desc, on_epoch=on_epoch)
        return stack.load_into(models)

    def init_model(self, model: nn.Module, data: TensorData) -> None:
        """A fresh model's data-dependent initialisation from the data it will be trained on (e.g. airbench's
        whitening). Nothing by default."""

    def _fit_objective(self, model, _forget, retain) -> torch.Tensor:
        return self.loss(model, retain).mean()

    @abstractmethod
    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        """The task's metric suite on one model; `seed` fixes any subsampling so models are comparable."""

    def compare_to_oracle(self, model: nn.Module, oracle: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, float]:
        """Metrics of `model` relative to the oracle (e.g. KL between their predictions). None by default."""
        return {}

    def save_pictures(self, run_dir: "Path", models: dict[str, nn.Module], runtime: Runtime, seed: int) -> None:
        """Write what a person would look at besides the numbers (e.g. generations of each model) into the
        run dir. `models` maps a row label (original, oracle, the method) to its model. Nothing by default."""

    def example_statistics(self, model: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, np.ndarray]:
        """One number per example for each of forget/retain/test and, where the data has one, val (e.g. the
        margin), compared across populations of models by KLoM, LiRA, RMIA and the ε score. Tasks that define it
        set has_example_statistics."""
        raise NotImplementedError

    def use_request(self, data: DataBundle, forget: ForgetSet) -> None:
        """A request that reaches the task after `setup` (a stream's step), for tasks whose metrics and methods
        read the request itself (a text-to-image concept). Nothing by default: the splits carry the request."""

    def judged_by(self, model: nn.Module, reference: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, float]:
        """Metrics of `model` judged by a fixed reference model (an LM's fluency of its answers under the run's
        original). None by default."""
        return {}

    def example_logprob(self, statistics: np.ndarray) -> np.ndarray:
        """log Pr(x | θ) of each example from its `example_statistics` value (RMIA's input); the statistic itself
        by default (an LM's mean answer log-probability)."""
        return np.asarray(statistics, dtype=np.float64)


@torch.inference_mode()
def mean_denoising_mse(task, model: nn.Module, data: TensorData, runtime: Runtime, seed: int, namespace: str) -> float:
    """Mean of `task.denoising_loss` over `data` in eval mode, with timesteps and noise fixed by (seed, namespace):
    the diffusion tasks' forget/retain MSE."""
    from unlearn.runtime import derive_seed

    generator = torch.Generator().manual_seed(derive_seed(seed, namespace))
    was_training = model.training
    model.eval()
    losses = []
    for batch in data.batches(task.eval_batch_size):
        with runtime.autocast():
            losses.append(task.denoising_loss(model, batch, generator).cpu())
    model.train(was_training)
    return float(torch.cat(losses).mean()) if losses else float("nan")

