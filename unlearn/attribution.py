"""TRAK data attribution for classifiers, per logit, and the datamodel predictions DMM is built on.

For each model θ_k of a small ensemble (originals trained on the full train set with different seeds):
    φ_i = P ∇θ margin(x_i)          projected gradient of each training example's margin (P: p × d, random)
    q_i = 1 − p(y_i | x_i)          TRAK's loss-gradient weight
    Ψ_k = (ΦᵀRΦ + λI)⁻¹ (Φ ∘ q)ᵀ    p × n_train, the only thing stored per model
with R = diag(q(1 − q)) (kernel="newton", the curvature of the margin loss: a one-step Newton estimate of
leaving examples out, of the right size for DMM's predicted outputs) or R = I (kernel="trak", TRAK's own choice,
right up to a scale that on well-fit training points, where q ≈ 0, is orders of magnitude too small)
(each model with its own q; TRAK proper averages the kernel products and q separately) and the attribution
score of training example i on logit c of input x is
    β_k[i, x, c] = (P ∇θ logit_c(x)) · Ψ_k[:, i],   β = mean_k β_k.
Removing a forget set F predicts the outputs f̂(x) = f_θo(x) − Σ_{i∈F} β[i, x]. The sum never needs β itself:
    Σ_{i∈F} β_k[i, x, :] = J_k(x) · Pᵀ Ψ_k[:, F]·1
is one forward-mode Jacobian-vector product of the logits at θ_k along a direction in weight space, for any
input x. So memory is Ψ (p × n_train per model) plus one batch of per-example gradients, never a
train × eval score matrix; `scores` materialises β only for the points it is asked about.

dattri 0.3.0 installs and runs here, but its TRAK attributes one scalar target function and returns
train × test score matrices; DMM needs all C logits summed over F for arbitrary inputs, which the JVP form
above gives without per-example target gradients. So the algebra is written here on torch.func.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.runtime import Runtime, derive_seed
from unlearn.knobs import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, OneOf

Params = dict[str, torch.Tensor]
KERNELS = ("trak", "newton")


class Projection:
    """A sparse random projection (CountSketch) of a model's trainable parameters to p dimensions.

    Coordinate j goes to bucket h(j) ∈ [0, p) with sign s(j) = ±1, both drawn once from the seed, so
    E[⟨Pu, Pv⟩] = ⟨u, v⟩. Applying it costs O(batch × d) and storing it O(d), where a dense Gaussian P
    would cost p × d: 23 billion numbers for a ResNet-18 at p = 2048. Its adjoint is a gather.
    """

    def __init__(self, shapes: dict[str, torch.Size], dim: int, seed: int):
        self.shapes, self.dim, self.seed = dict(shapes), int(dim), int(seed)
        self._hashes: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _hash(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket, sign) of every coordinate of one parameter, drawn on the CPU so every device agrees."""
        if (name, device) not in self._hashes:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, name))
            numel = int(np.prod(self.shapes[name]))
            bucket = torch.randint(0, self.dim, (numel,), generator=generator)
            sign = torch.randint(0, 2, (numel,), generator=generator).float().mul_(2).sub_(1)
            self._hashes[name, device] = bucket.to(device), sign.to(device)
        return self._hashes[name, device]

    def project(self, vectors: Params) -> torch.Tensor:
        """(B, *shape) per parameter → (B, p): P applied to each of B flattened vectors."""
        first = next(iter(vectors.values()))
        out = torch.zeros((first.shape[0], self.dim), device=first.device, dtype=torch.float32)
        for name, v in vectors.items():
            bucket, sign = self._hash(name, first.device)
            out.index_add_(1, bucket, v.reshape(v.shape[0], -1).float() * sign)
        return out

    def adjoint(self, w: torch.Tensor) -> Params:
        """Pᵀ w for w of shape (p,): a direction in weight space, shaped like the parameters."""
        out = {}
        for name, shape in self.shapes.items():
            bucket, sign = self._hash(name, w.device)
            out[name] = (w.float()[bucket] * sign).view(shape)
        return out


def _split_state(model: nn.Module) -> tuple[Params, Params]:
    """(trainable parameters, everything else functional_call needs) of a model, detached."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: t.detach() for n, t in model.named_buffers()}
    fixed.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    return params, fixed


def _margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """logit_y − logsumexp(other logits) of one example (TRAK's classification output function)."""
    is_label = torch.arange(logits.shape[-1], device=logits.device) == label
    others = logits.masked_fill(is_label, float("-inf"))
    return (logits * is_label).sum() - torch.logsumexp(others, dim=-1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode with autograd available, whatever the caller's mode: evaluation runs under inference mode
    and may build the attribution lazily, and neither gradients nor forward-mode AD work there."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        model.train(was_training)


@dataclass
class Member:
    """One ensemble model with its projection and Ψ = (ΦᵀRΦ + λI)⁻¹ (Φ ∘ q)ᵀ (p × n_train)."""

    model: nn.Module
    projection: Projection
    psi: torch.Tensor


class Attribution:
    """Per-logit TRAK scores of the training set on any input, averaged over an ensemble."""

    def __init__(self, members: Sequence[Member], batch_size: int = 256):
        if not members:
            raise ConfigError("attribution needs at least one model")
        self.members = list(members)
        self.batch_size = int(batch_size)

    @property
    def n_train(self) -> int:
        return int(self.members[0].psi.shape[1])

    def _check_indices(self, indices: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.n_train):
            raise ConfigError(f"train indices must lie in [0, {self.n_train}), got [{int(idx.min())}, {int(idx.max())}]")
        return idx

    def removal_directions(self, removed: np.ndarray) -> list[Params]:
        """Per member, the weight-space direction Pᵀ Ψ[:, F]·1 whose logit JVP is Σ_{i∈F} β[i, x, :]."""
        idx = self._check_indices(removed)
        return [m.projection.adjoint(m.psi[:, idx.to(m.psi.device)].sum(1)) for m in self.members]

    def predicted_change(self, x: torch.Tensor, directions: list[Params]) -> torch.Tensor:
        """Σ_{i∈F} β[i, x, :] for inputs `x`: how much including F raised each logit, shape (n, C)."""
        total = None
        for member, direction in zip(self.members, directions):
            params, fixed = _split_state(member.model)
            tangent_in = {n: direction[n].to(params[n].dtype) for n in params}
            chunks = []
            with _eval_mode(member.model):
                for start in range(0, len(x), self.batch_size):
                    chunk = x[start : start + self.batch_size].clone()  # inference-mode inputs cannot enter forward AD
                    _, tangent = jvp(lambda p: functional_call(member.model, {**p, **fixed}, (chunk,)), (params,),
                                     (tangent_in,))
                    chunks.append(tangent.detach().float())
            change = torch.cat(chunks)
            total = change if total is None else total + change
        return total / len(self.members)

    def scores(self, x: torch.Tensor, train_indices: np.ndarray) -> torch.Tensor:
        """β[i, x, c] for the given training examples and inputs, shape (len(train_indices), n, C).

        Materialised from per-example, per-logit gradients: for checks and analysis on a few points; DMM
        itself uses `predicted_change`, which needs none of this."""
        idx = self._check_indices(train_indices)
        total = None
        for member in self.members:
            params, fixed = _split_state(member.model)

            def logits_of(p, example):
                return functional_call(member.model, {**p, **fixed}, (example.unsqueeze(0),))[0]

            jacobian = vmap(torch.func.jacrev(logits_of), in_dims=(None, 0))
            blocks = []
            with _eval_mode(member.model):
                for start in range(0, len(x), self.batch_size):
                    jac = jacobian(params, x[start : start + self.batch_size].clone())   # name -> (b, C, *shape)
                    b, c = next(iter(jac.values())).shape[:2]
                    features = member.projection.project({n: j.reshape(b * c, *j.shape[2:]) for n, j in jac.items()})
                    blocks.append((features @ member.psi[:, idx.to(member.psi.device)]).view(b, c, -1))
            beta = torch.cat(blocks).permute(2, 0, 1)
            total = beta if total is None else total + beta
        return total / len(self.members)


class Trak:
    """Fits `Attribution` from trained models: the config of `conf/attribution/trak.yaml`."""

    knobs = {"models": COUNT, "proj_dim": COUNT, "damping": NON_NEGATIVE, "batch_size": COUNT,
             "seed": NON_NEGATIVE_INT, "kernel": OneOf(KERNELS)}

    def __init__(self, models: int = 4, proj_dim: int = 2048, damping: float = 1e-2, batch_size: int = 128,
                 seed: int = 0, kernel: str = "newton"):
        if int(models) < 1 or int(proj_dim) < 1 or int(batch_size) < 1:
            raise ConfigError(f"attribution needs models >= 1, proj_dim >= 1 and batch_size >= 1; got models={models}, "
                              f"proj_dim={proj_dim}, batch_size={batch_size}")
        if not float(damping) >= 0:
            raise ConfigError(f"attribution.damping must be >= 0, got {damping}")
        self.models, self.proj_dim, self.damping = int(models), int(proj_dim), float(damping)
        self.batch_size, self.seed = int(batch_size), int(seed)
        if kernel not in KERNELS:
            raise ConfigError(f"attribution.kernel={kernel!r} is not one of {KERNELS}")
        self.kernel = kernel

    def cache_fields(self) -> dict[str, Any]:
        return {"version": 2, "projection": "countsketch", "proj_dim": self.proj_dim, "damping": self.damping,
                "seed": self.seed, "kernel": self.kernel}

    def projection(self, model: nn.Module, index: int) -> Projection:
        shapes = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
        return Projection(shapes, self.proj_dim, derive_seed(self.seed, "projection", str(index)))

    def train_features(self, model: nn.Module, projection: Projection, train: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
        """(Φ, q): projected margin gradients (n × p) and 1 − p(y|x) (n) of every training example, eval mode."""
        params, fixed = _split_state(model)

        def margin_of(p, x, y):
            return _margin(functional_call(model, {**p, **fixed}, (x.unsqueeze(0),))[0].float(), y)

        per_example = vmap(grad(margin_of), in_dims=(None, 0, 0))
        phi, q = [], []
        with _eval_mode(model):
            for batch in tqdm(list(train.batches(self.batch_size)), desc="attribution features", leave=False, disable=None):
                phi.append(projection.project(per_example(params, batch["x"], batch["y"])))
                with torch.no_grad():
                    probs = torch.softmax(model(batch["x"]).float(), dim=1)
                q.append(1 - probs.gather(1, batch["y"][:, None])[:, 0])
        return torch.cat(phi), torch.cat(q)

    def psi(self, phi: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(ΦᵀRΦ + λI)⁻¹ (Φ ∘ q)ᵀ, with λ = damping × the mean diagonal of the kernel (scale-free), in float64.

        R = I for kernel="trak" (TRAK's choice: scores right up to scale, which ranking needs). For
        kernel="newton", R = diag(p(1 − p)), the margin loss's curvature: a one-step Newton (influence)
        estimate of leaving each example out, whose absolute size is what DMM's predicted outputs need."""
        phi64 = phi.double()
        weights = q.double() * (1 - q.double()) if self.kernel == "newton" else torch.ones_like(q, dtype=torch.float64)
        kernel = phi64.T @ (phi64 * weights[:, None])
        kernel.diagonal().add_(self.damping * kernel.diagonal().mean() + 1e-12)
        return torch.linalg.solve(kernel, (phi64 * q.double()[:, None]).T).float()

    def fit(self, models: Sequence[nn.Module], train: TensorData) -> dict[str, Any]:
        """The cacheable part: Ψ of each model (the models themselves are cached as originals)."""
        start = time.perf_counter()
        psis = []
        for index, model in enumerate(tqdm(models, desc="attribution", leave=False, disable=None)):
            phi, q = self.train_features(model, self.projection(model, index), train)
            psis.append(self.psi(phi, q).cpu())
        return {"psi": psis, "seconds": time.perf_counter() - start}

    def attribution(self, models: Sequence[nn.Module], payload: dict[str, Any], runtime: Runtime) -> Attribution:
        members = [Member(model, self.projection(model, i), psi.to(runtime.device))
                   for i, (model, psi) in enumerate(zip(models, payload["psi"]))]
        return Attribution(members, self.batch_size)
