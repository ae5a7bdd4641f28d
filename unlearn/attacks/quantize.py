"""`attack=quantize`: weight-only post-training quantization of the deployed model, then the task's metrics
(Zhang et al., ICLR 2025, "Catastrophic failure of LLM unlearning via quantization": an unlearning update smaller
than half a quantization step rounds back to the original's weight, so the forgotten knowledge returns).

Every weight of `weight_matrices` (Linear and Conv layers, not the LM head, embeddings, norms or biases) is
quantized and dequantized in place of a copy — round-to-nearest (RTN), what a user gets by loading a model in 8
or 4 bit without calibration. Groups run along each output row (the input dimension, flattened for a conv):
- `symmetric`: per group s = max|x| / (2^(b−1) − 1), q = clamp(round(x / s), −2^(b−1), 2^(b−1) − 1), x̂ = q·s;
- `asymmetric`: per group s = (max − min) / (2^b − 1), z = round(−min / s), q = clamp(round(x / s) + z, 0, 2^b − 1),
  x̂ = (q − z)·s;
- the GGUF block formats of llama.cpp (blocks of 32, fp16 scales), bit-exact to `gguf`'s reference (the
  `gguf` package's `gguf.quants`, itself bit-exact to ggml-quants.c; tests/test_attacks_more.py checks it when
  the package is installed): `q8_0` (d = max|x| / 127, q = roundf(x / d)), `q4_0` (d = the signed value of
  largest magnitude / −8, q = min(15, trunc(x / d + 8.5)), x̂ = (q − 8)·d) and `q4_1` (d = (max − min) / 15,
  q = min(15, trunc((x − min) / d + 0.5)), x̂ = q·d + min).
A row whose length is not a multiple of the group is padded by repeating its last value (which changes no
group's max, min or largest-magnitude element); llama.cpp would keep such a tensor in another format.

Figures beside the metrics (`quantize.<name>`): `cost_s`; and, against the run's original θo, over the weights
that differ from θo's: `rounded_back`, the share rounded to the same integer level as θo's weight (the update
was undone by rounding, up to a small change of the group's scale), and `below_half_step`, the share whose distance to θo is under half the quantization
step of their group (the paper's mechanism, measured). Both are NaN for θo itself (nothing differs).
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from unlearn.attacks.base import Attack, AttackContext, weight_matrices
from unlearn.errors import ConfigError
from unlearn.knobs import OneOf, Range

SCHEMES = ("symmetric", "asymmetric", "q8_0", "q4_0", "q4_1")
GGUF_BITS = {"q8_0": 8, "q4_0": 4, "q4_1": 4}
GGUF_BLOCK = 32


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def _symmetric(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    top = 2 ** (bits - 1) - 1
    s = x.abs().amax(-1, keepdim=True) / top
    q = (x * _inverse(s)).round().clamp(-top - 1, top)
    return q * s, s, q


def _asymmetric(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    s = (hi - lo) / (2 ** bits - 1)
    inv = _inverse(s)
    z = (-lo * inv).round()
    q = ((x * inv).round() + z).clamp(0, 2 ** bits - 1)
    return torch.where(s == 0, lo.expand_as(x), (q - z) * s), s, q - z


def _q8_0(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = x.abs().amax(-1, keepdim=True) / 127
    q = _roundf(x * _inverse(d))
    d16 = d.half().float()
    return q * d16, d16, q


def _q4_0(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    biggest = x.gather(-1, x.abs().argmax(-1, keepdim=True))   # the first element of largest magnitude, signed
    d = biggest / -8
    q = torch.trunc(x * _inverse(d) + 8.5).clamp(0, 15)
    d16 = d.half().float()
    return (q - 8) * d16, d16.abs(), (q - 8) * torch.sign(d16)


def _q4_1(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp(0, 15)
    d16, m16 = d.half().float(), lo.half().float()
    return q * d16 + m16, d16, q


_QUANTIZERS = {"symmetric": _symmetric, "asymmetric": _asymmetric, "q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1}


def quantize_weight(w: torch.Tensor, bits: int, group_size: int | None,
                    scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the dequantized weight, its group's quantization step, its integer level), each of w's shape (the first
    in w's dtype). Groups of `group_size` along each output row (None: the whole row); GGUF schemes use their
    block of 32. The level is the multiple of the step a weight is rounded to (relative to the group's zero
    point or minimum, oriented as the weight for q4_0), so two weights rounded alike share it even where their
    groups' scales differ slightly."""
    rows = w.detach().reshape(w.shape[0], -1).float() if w.dim() > 1 else w.detach().reshape(1, -1).float()
    n = rows.shape[1]
    g = GGUF_BLOCK if scheme in GGUF_BITS else (n if group_size is None else int(group_size))
    pad = (-n) % g
    if pad:
        rows = torch.cat([rows, rows[:, -1:].expand(-1, pad)], 1)
    blocks = rows.reshape(-1, g)
    values, step, level = _QUANTIZERS[scheme](blocks, bits)
    unblock = lambda t: t.expand_as(blocks).reshape(rows.shape)[:, :n].reshape(w.shape)  # noqa: E731
    return unblock(values).to(w.dtype), unblock(step), unblock(level)


class Quantize(Attack):
    """Weight-only RTN quantization to `bits` (8 | 4) in groups of `group_size` (null: per output row) with
    `scheme` symmetric | asymmetric, or a GGUF format q8_0 | q4_0 | q4_1 (its own bits and block of 32)."""

    name = "quantize"
    figure_names = ("cost_s", "rounded_back", "below_half_step")
    knobs = {"bits": OneOf((8, 4)), "group_size": Range(1, integer=True, optional=True), "scheme": OneOf(SCHEMES)}

    def __init__(self, bits: int = 4, group_size: int | None = 128, scheme: str = "symmetric"):
        self.bits, self.scheme = int(bits), str(scheme)
        self.group_size = None if group_size is None else int(group_size)
        if scheme in GGUF_BITS and GGUF_BITS[scheme] != self.bits:
            raise ConfigError(f"attack.scheme={scheme} is a {GGUF_BITS[scheme]}-bit format, but attack.bits="
                              f"{self.bits}; set attack.bits={GGUF_BITS[scheme]}")
        self._cost = float("nan")

    def quantized(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        with torch.no_grad():
            for _, w in weight_matrices(out):
                w.copy_(quantize_weight(w, self.bits, self.group_size, self.scheme)[0])
        return out

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        start = time.perf_counter()
        out = self.quantized(model)
        self._cost = time.perf_counter() - start
        return out

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        from unlearn.models.lora import deployed

        figures = {"cost_s": self._cost, "rounded_back": float("nan"), "below_half_step": float("nan")}
        if ctx.original is None:
            return figures
        mine, theirs = weight_matrices(deployed(model)), dict(weight_matrices(deployed(ctx.original)))
        changed = back = below = 0
        with torch.no_grad():
            for name, w in mine:
                o = theirs.get(name)
                if o is None or o.shape != w.shape:
                    return figures  # another architecture: no weight-by-weight comparison
                differs = w != o
                if not bool(differs.any()):
                    continue
                _, step, qw = quantize_weight(w, self.bits, self.group_size, self.scheme)
                _, _, qo = quantize_weight(o, self.bits, self.group_size, self.scheme)
                changed += int(differs.sum())
                back += int((differs & (qw == qo)).sum())
                below += int((differs & ((w - o).abs().float() < step.float() / 2)).sum())
        if changed:
            figures |= {"rounded_back": back / changed, "below_half_step": below / changed}
        return figures
