"""Worst-case forget sets [Challenging Forgets]: the examples (or classes) hardest to forget.

Selection weights w ∈ [0, 1]^U over U units (examples, groups or classes) with Σw = m. Each upper step
starts from a copy of the original and runs the *lower level*: SignSGD on Σ_i (1 − w_u(i))·ℓ_i(θ)
(+ l1·‖θ‖₁), i.e. an unlearning that keeps everything except the weighted units. The *upper level*
then moves w against the post-unlearning loss of each unit, w ← Π(w − lr_w·(ℓ_u(θ) + 2γw)), where Π
projects onto {0 ≤ w ≤ 1, Σw = m}; every `binarize_every` steps and at the end w is rounded to its
top m. The chosen units are those that stay easiest (lowest loss) after unlearning: the hardest to forget.

Like the reference, the upper step is first order (the implicit dependence of θ on w is ignored), the
lower level counts whole epochs over the train set (the reference's `unlearn_steps`) and sums the weighted
losses. Unlike it, w starts at the centre m/U rather than at a random binary set (see `select`), and a
unit's loss is the mean over its examples, so classes of different sizes are compared on one scale.

Cost. Almost all the time is the lower level's SignSGD steps (on 2 CPU cores the convolutions already run
near the core's fp32 peak, so there is little to save per step). Two knobs trade re-runs for averaging:
`resolve_every` re-solves the lower level only every k-th upper step (the steps between reuse its losses),
and `tail_steps` averages each unit's loss over the lower level's last iterates (Polyak-style tail
averaging) instead of taking the last one. Started at the centre, w moves by ~lr_w·ℓ per step, so the lower
level barely depends on w and its re-runs mostly average out SignSGD's noise: tail averaging buys the same
averaging from fewer re-runs. resolve_every=1, tail_steps=1 is the paper's procedure (the code's defaults);
conf/forget/worst_case.yaml sets the faster pair, whose selections overlap the paper procedure's as much as
two seeds of that procedure overlap each other (figures: results/worst_case_speed.md; on other data, measure
with benchmarks/worst_case_speed.py). A rounding of w (binarize_every) changes the lower level a great deal,
so let resolve_every divide binarize_every, which re-solves right after each rounding. bf16 is no shortcut:
it rounds away the differences between the near-zero losses that decide the ranking.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from unlearn.data.forget import ClassForget, ForgetBuilder, ForgetSet, RandomForget, Reference
from unlearn.data.tensordata import Batch, DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.training import OptimConfig, Streams, optimise
from unlearn.knobs import COUNT, NON_NEGATIVE

log = logging.getLogger(__name__)

# Column added to the training examples so that a batch knows which unit each of its examples belongs to.
UNIT_KEY = "_worst_case_unit"


def project_capped_simplex(v: torch.Tensor, m: float, lo: float = 0.0, hi: float = 1.0,
                           iterations: int = 100) -> torch.Tensor:
    """Euclidean projection of `v` onto {lo ≤ w ≤ hi, Σw = m}: w = clip(v − τ, lo, hi), τ by bisection.

    Σ clip(v − τ) falls monotonically from N·hi (τ ≤ min v − hi) to N·lo (τ ≥ max v − lo), so halving
    that bracket 100 times pins τ to float64 precision.
    """
    n = v.numel()
    if not lo < hi:
        raise ConfigError(f"the box [{lo}, {hi}] is empty; need lo < hi")
    if not n * lo <= m <= n * hi:
        raise ConfigError(f"no {n} weights in [{lo}, {hi}] sum to {m}; the sum must lie in [{n * lo}, {n * hi}]")
    v = v.double()
    low, high = float(v.min()) - hi, float(v.max()) - lo
    for _ in range(iterations):
        tau = (low + high) / 2
        if float(torch.clamp(v - tau, lo, hi).sum()) > m:
            low = tau
        else:
            high = tau
    return torch.clamp(v - (low + high) / 2, lo, hi)


def top_m(w: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m largest weights; ties go to the lower index, so the result is reproducible."""
    return torch.argsort(-w, stable=True)[:m]


class SignGradients:
    """Optimiser hooks that turn plain SGD (no momentum, no weight decay) into SignSGD: θ ← θ − lr·sign(∇)."""

    def after_backward(self, model: nn.Module) -> None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.sign_()

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass


class TailLosses(SignGradients):
    """SignSGD hooks that also sum the unit losses after each of the last `tail` of `total` steps
    (`losses(model)` evaluates them; the model goes back to train mode for the steps that follow)."""

    def __init__(self, total: int, tail: int, losses):
        self.step, self.first, self.losses = 0, total - min(tail, total), losses
        self.total, self.count = None, 0

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        if self.step > self.first:
            current = self.losses(model)
            self.total = current if self.total is None else self.total + current
            self.count += 1
            model.train()

    def mean(self) -> torch.Tensor:
        return self.total / self.count


class BilevelSelection:
    """The bilevel search shared by the example-wise and the class-wise builders (knobs in conf/forget/)."""

    needs_original = True
    knobs = {"upper_epochs": COUNT, "lower_epochs": COUNT, "lr_w": NON_NEGATIVE, "lr_theta": NON_NEGATIVE,
             "gamma": NON_NEGATIVE, "l1": NON_NEGATIVE, "binarize_every": COUNT, "batch_size": COUNT,
             "resolve_every": COUNT, "tail_steps": COUNT}

    def _init_bilevel(self, upper_epochs: int, lower_epochs: int, lr_w: float, lr_theta: float, gamma: float,
                      l1: float, binarize_every: int, batch_size: int, resolve_every: int, tail_steps: int) -> None:
        for name, value in (("upper_epochs", upper_epochs), ("lower_epochs", lower_epochs),
                            ("binarize_every", binarize_every), ("batch_size", batch_size),
                            ("resolve_every", resolve_every), ("tail_steps", tail_steps)):
            if int(value) != value or value < 1:
                raise ConfigError(f"forget.{name} must be a positive integer, got {value}")
        for name, value in (("lr_w", lr_w), ("lr_theta", lr_theta), ("gamma", gamma), ("l1", l1)):
            if not float(value) >= 0:
                raise ConfigError(f"forget.{name} must be >= 0, got {value}")
        self.upper_epochs, self.lower_epochs = int(upper_epochs), int(lower_epochs)
        self.lr_w, self.lr_theta, self.gamma, self.l1 = float(lr_w), float(lr_theta), float(gamma), float(l1)
        self.binarize_every, self.batch_size = int(binarize_every), int(batch_size)
        self.resolve_every, self.tail_steps = int(resolve_every), int(tail_steps)

    # ---- lower level ---------------------------------------------------------------------------
    def unlearn_keeping(self, reference: Reference, train: TensorData, units: torch.Tensor, keep: torch.Tensor,
                        generator: torch.Generator, hooks: Optional[SignGradients] = None) -> nn.Module:
        """A copy of the original after `lower_epochs` of SignSGD on Σ_i keep[units[i]]·ℓ_i (+ l1·‖θ‖₁);
        `hooks` (SignGradients or a subclass) may also watch the steps."""
        task = reference.task
        model = copy.deepcopy(reference.model)
        keep = keep.to(device=reference.runtime.device, dtype=torch.float32)
        l1 = self.l1

        def objective(m: nn.Module, _forget: Optional[Batch], batch: Batch) -> torch.Tensor:
            inputs = {k: v for k, v in batch.items() if k != UNIT_KEY}
            loss = (keep[batch[UNIT_KEY]] * task.loss(m, inputs)).sum()
            if l1 > 0:
                loss = loss + l1 * sum(p.abs().sum() for p in m.parameters())
            return loss

        data = TensorData(**train.tensors, **{UNIT_KEY: units.to(reference.runtime.device)})
        recipe = OptimConfig(epochs=self.lower_epochs, lr=self.lr_theta, batch_size=self.batch_size,
                             optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant")
        optimise(model, objective, Streams(retain=data, mode="retain"), recipe, reference.runtime, generator,
                 augment=task.augment, hooks=hooks or SignGradients(), desc="worst-case lower level")
        return model

    def lower_level_losses(self, reference: Reference, train: TensorData, units: torch.Tensor, n_units: int,
                           keep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n_units,) float64: each unit's loss after the lower level, averaged over its last `tail_steps`
        SignSGD iterates (tail_steps=1: the loss of the unlearned model, as the paper)."""
        total = self.lower_epochs * math.ceil(len(train) / self.batch_size)
        tail = TailLosses(total, self.tail_steps, lambda model: self.unit_losses(reference, model, train, units, n_units))
        self.unlearn_keeping(reference, train, units, keep, generator, hooks=tail)
        return tail.mean()

    # ---- upper level ---------------------------------------------------------------------------
    @torch.inference_mode()
    def unit_losses(self, reference: Reference, model: nn.Module, train: TensorData, units: torch.Tensor,
                    n_units: int) -> torch.Tensor:
        """Mean loss of each unit's examples under `model` (eval mode, no augmentation), float64 on the CPU."""
        model.eval()
        losses = []
        for batch in train.batches(self.batch_size):
            with reference.runtime.autocast():
                losses.append(reference.task.loss(model, batch).float())
        per_example = torch.cat(losses).double().cpu()
        units = units.cpu()
        total = torch.zeros(n_units, dtype=torch.float64).index_add_(0, units, per_example)
        return total / torch.bincount(units, minlength=n_units)

    def select(self, reference: Optional[Reference], train: TensorData, ids: np.ndarray, m: int,
               seed: int, candidates: Optional[np.ndarray] = None) -> tuple[np.ndarray, dict]:
        """The m units hardest to forget, where `ids` gives each training example's unit (its own index, its
        group, its class); returns the chosen unit ids, sorted, and a summary of the search. `candidates`: the unit
        ids that may be chosen (None: every unit); the others keep weight 0, so the lower level always keeps them
        (background knowledge, or the reported request when drawing a validation request beside it)."""
        if reference is None:
            raise ConfigError(f"{type(self).__name__} chooses the forget set with the trained original; "
                              f"call build(data, seed, reference) with the original")
        unit_ids, positions = np.unique(ids, return_inverse=True)
        units, n_units = torch.as_tensor(positions, dtype=torch.long), len(unit_ids)
        allowed = torch.as_tensor(np.ones(n_units, dtype=bool) if candidates is None else np.isin(unit_ids, candidates))
        n_allowed = int(allowed.sum())
        if not m < n_allowed:
            raise ConfigError(f"the worst-case search would choose {m} of only {n_allowed} candidate units")
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        # Start at the centre of the feasible set, not at the reference's random binary set: from 0/1 weights,
        # steps of lr_w·ℓ ≈ 0.01·CE never reorder w (on digits the search returned its random start exactly).
        w = torch.zeros(n_units, dtype=torch.float64)
        w[allowed] = m / n_allowed
        bar = tqdm(range(self.upper_epochs), desc="worst-case selection", disable=None)
        solves = 0
        for step in bar:
            if step % self.resolve_every == 0:  # between re-solves, w keeps moving against the same losses
                losses = self.lower_level_losses(reference, train, units, n_units, 1 - w, generator)
                solves += 1
            moved = w - self.lr_w * (losses + 2 * self.gamma * w)
            w = torch.zeros_like(w)
            w[allowed] = project_capped_simplex(moved[allowed], m)
            if (step + 1) % self.binarize_every == 0 or step + 1 == self.upper_epochs:
                w = self._binary(w, allowed, m)
            upper_loss = float((w * losses).sum() / m)
            bar.set_postfix(upper_loss=f"{upper_loss:.4f}")
        log.info("worst-case selection: %d of %d units in %.1f s, %d lower-level solves (their mean loss after "
                 "unlearning: %.4f)", m, n_allowed, time.perf_counter() - start, solves, upper_loss)
        return np.sort(unit_ids[self._top(w, allowed, m).numpy()]), {"upper_loss": upper_loss}

    @staticmethod
    def _top(w: torch.Tensor, allowed: torch.Tensor, m: int) -> torch.Tensor:
        """Positions of the m largest weights among the allowed units."""
        return top_m(torch.where(allowed, w, torch.tensor(-math.inf, dtype=w.dtype)), m)

    def _binary(self, w: torch.Tensor, allowed: torch.Tensor, m: int) -> torch.Tensor:
        binary = torch.zeros_like(w)
        binary[self._top(w, allowed, m)] = 1.0
        return binary


class WorstCaseForget(BilevelSelection, RandomForget):
    """The `ratio` (or `count`) of training examples hardest to forget; of the groups, for grouped data (background
    knowledge, a negative group, is never a candidate)."""

    name = "worst_case"

    def __init__(self, ratio: float | None = 0.1, count: int | None = None, upper_epochs: int = 10,
                 lower_epochs: int = 10, lr_w: float = 0.01, lr_theta: float = 0.01, gamma: float = 0.0,
                 l1: float = 0.0, binarize_every: int = 20, batch_size: int = 256, resolve_every: int = 1,
                 tail_steps: int = 1):
        RandomForget.__init__(self, ratio=ratio, count=count)
        self._init_bilevel(upper_epochs, lower_epochs, lr_w, lr_theta, gamma, l1, binarize_every, batch_size,
                           resolve_every, tail_steps)

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        self.check(data)
        return self._worst(data, seed, reference, self._units(data))

    def _worst(self, data: DataBundle, seed: int, reference: Optional[Reference], candidates: np.ndarray) -> ForgetSet:
        grouped = "group" in data.train.keys()
        ids = data.train["group"].cpu().numpy() if grouped else np.arange(len(data.train))
        chosen, summary = self.select(reference, data.train, ids, self._size(len(self._units(data))), seed, candidates)
        indices = np.flatnonzero(np.isin(ids, chosen))
        description = {"builder": self.name, "ratio": self.ratio, "count": self.count, **summary}
        if grouped:
            description["groups"] = chosen.tolist()
        return ForgetSet(indices=indices, test_indices=None, description={**description, "size": int(len(indices))})

    def validation(self, data: DataBundle, reported: ForgetSet, seed: int,
                   reference: Optional[Reference] = None) -> ForgetSet:
        """As many units as `reported`, the hardest to forget among those it leaves: the same bilevel search from the
        same original, with the reported units kept out of the candidates (so V is worst-case as F is, and shares
        none of its examples)."""
        self.check_validation(data)
        taken = reported.description.get("groups") if "group" in data.train.keys() else reported.indices
        forget = self._worst(data, seed, reference, np.setdiff1d(self._units(data), np.asarray(taken)))
        forget.description["validation"] = True
        return forget


class WorstCaseClassForget(BilevelSelection, ForgetBuilder):
    """The `num_classes` classes hardest to forget; like ClassForget, they also leave the test set for TA."""

    name = "worst_case_class"
    removes_classes = True

    knobs = {"num_classes": COUNT}

    def __init__(self, num_classes: int = 1, upper_epochs: int = 10, lower_epochs: int = 10, lr_w: float = 0.01,
                 lr_theta: float = 0.01, gamma: float = 0.0, l1: float = 0.0, binarize_every: int = 20,
                 batch_size: int = 256, resolve_every: int = 1, tail_steps: int = 1):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ConfigError(f"forget.num_classes must be a positive integer, got {num_classes}")
        self.num_classes = int(num_classes)
        self._init_bilevel(upper_epochs, lower_epochs, lr_w, lr_theta, gamma, l1, binarize_every, batch_size,
                           resolve_every, tail_steps)

    def check(self, data: DataBundle) -> None:
        if "y" not in data.train.keys():
            raise ConfigError(f"class-wise forgetting needs class labels, and data {data.name!r} has none; "
                              f"use forget=worst_case")
        present = len(np.unique(data.train["y"].cpu().numpy()))
        if self.num_classes >= present:
            raise ConfigError(f"forget.num_classes={self.num_classes} would forget every class present in the "
                              f"training data of {data.name!r} ({present}); choose 1..{present - 1}")

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        self.check(data)
        # Units are the classes present in the training data (a class with no examples cannot be forgotten).
        return self._worst(data, seed, reference, None)

    def _worst(self, data: DataBundle, seed: int, reference: Optional[Reference],
               candidates: Optional[np.ndarray]) -> ForgetSet:
        chosen, summary = self.select(reference, data.train, data.train["y"].cpu().numpy(), self.num_classes, seed,
                                      candidates)
        # ClassForget turns the chosen classes into train indices and the test examples kept for TA.
        forget = ClassForget(chosen.tolist()).build(data, seed)
        forget.description = {"builder": self.name, "num_classes": self.num_classes, "classes": chosen.tolist(),
                              **summary, "size": int(len(forget.indices))}
        return forget

    draws_validation = True

    def check_validation(self, data: DataBundle) -> None:
        """Twice `num_classes` classes must leave one: the validation search chooses among the classes the request
        leaves, and keeps at least one of them."""
        self.check(data)
        present = len(np.unique(data.train["y"].cpu().numpy()))
        if 2 * self.num_classes >= present:
            raise ConfigError(f"a validation request of {self.num_classes} class(es) beside the reported "
                              f"{self.num_classes} needs more than {2 * self.num_classes} classes; {data.name!r} has "
                              f"{present}: lower forget.num_classes")

    def validation(self, data: DataBundle, reported: ForgetSet, seed: int,
                   reference: Optional[Reference] = None) -> ForgetSet:
        """As many classes as `reported`, the hardest to forget among the other classes (same search, same original;
        they also leave the test set)."""
        self.check_validation(data)
        others = np.setdiff1d(np.unique(data.train["y"].cpu().numpy()), reported.description["classes"])
        forget = self._worst(data, seed, reference, others)
        forget.description["validation"] = True
        return forget
