"""RMIA (Zarifzadeh, Liu, Shokri, ICML 2024, "Low-cost high-power membership inference attacks") and the
low-FPR figures every membership attack reports beside its AUC.

RMIA tests a target x against population samples z with a pairwise likelihood ratio:
    LR_θ(x, z) = [Pr(x | θ) / Pr(x)] / [Pr(z | θ) / Pr(z)],     Score(x) = Pr_z[ LR_θ(x, z) ≥ γ ],
where Pr(·) is the average of Pr(· | θ') over reference models. Offline (reference models that never trained on
the targets, here the oracles), the paper approximates the average over IN and OUT models linearly from the OUT
ones: Pr(x) = ½ [(1 + a) · Pr_OUT(x) + (1 − a)]. Pr(x | θ) is the model's probability of the example (a
classifier: of its true label; an LM: of its answer, per token).
"""
from __future__ import annotations

import numpy as np

from unlearn.errors import ConfigError, ShapeError
from unlearn.eval.checks import as_array
from unlearn.eval.mia import attack_roc

#: the paper's reference configuration: γ = 2; the offline a is tuned per data set in the paper, 0.3 by default here
RMIA_GAMMA = 2.0
RMIA_OFFLINE_A = 0.3


def rmia_scores(target_x: np.ndarray, refs_x: np.ndarray, target_z: np.ndarray, refs_z: np.ndarray,
                gamma: float = RMIA_GAMMA, offline_a: float | None = RMIA_OFFLINE_A) -> np.ndarray:
    """RMIA's score of every target: the share of population samples z it dominates, Pr_z[LR(x, z) ≥ γ].

    target_x: (n,) log Pr(x | θ) of the n targets under the attacked model; refs_x: (K, n) the same under K
    reference models; target_z: (m,) and refs_z: (K, m) the same for m population samples (never trained on by
    any model). `offline_a`: the offline approximation's a in [0, 1] (None: online, the references are IN and OUT
    models and Pr(x) is their plain mean). Returns (n,) scores in [0, 1]; higher = more member-like."""
    dims: dict[str, int] = {}
    tx = as_array(target_x, "target_x", ("n",), dims)
    rx = as_array(refs_x, "refs_x", ("K", "n"), dims)
    tz = as_array(target_z, "target_z", ("m",), dims)
    rz = as_array(refs_z, "refs_z", ("K", "m"), dims)
    if rx.shape[0] < 1:
        raise ShapeError("RMIA needs at least one reference model")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")

    def prior(refs: np.ndarray) -> np.ndarray:
        mean = np.exp(refs).mean(axis=0)
        return mean if offline_a is None else 0.5 * ((1.0 + offline_a) * mean + (1.0 - offline_a))

    log_ratio_x = tx - np.log(prior(rx))                  # log [Pr(x|θ) / Pr(x)]
    log_ratio_z = tz - np.log(prior(rz))
    # LR(x, z) ≥ γ  ⇔  log ratio_x − log ratio_z ≥ log γ; counted against every z.
    return (log_ratio_x[:, None] - log_ratio_z[None, :] >= np.log(gamma)).mean(axis=1)


def low_fpr_levels(n_negatives: int, requested=None) -> tuple[float, ...]:
    """The false-positive rates a sample of `n_negatives` non-members can resolve: a TPR at FPR f needs at least
    1/f negatives. `requested` None ("auto"): 1% and 0.1% where the sample resolves them; a sample too small for
    1% (under 100 negatives) reports the TPR at FPR 0 (`<attack>_tpr_0pct`: the examples identified with no false
    positive at all), so no figure claims a resolution the sample does not have. An explicit level (a number or a
    list) that the sample cannot resolve is refused (ConfigError), naming how many negatives it needs."""
    if requested is None:
        levels = tuple(f for f in (0.01, 0.001) if n_negatives >= round(1 / f))
        return levels or (0.0,)
    levels = tuple(float(f) for f in ([requested] if isinstance(requested, (int, float)) else requested))
    for f in levels:
        if not 0 < f < 1:
            raise ConfigError(f"eval.low_fpr levels must lie in (0, 1), got {f}")
        if n_negatives < round(1 / f):
            raise ConfigError(f"eval.low_fpr={f} needs at least {round(1 / f)} held-out examples to resolve; the "
                              f"test split has {n_negatives} (use a coarser level, or null: the levels it resolves, "
                              f"or the TPR at FPR 0 below 100 examples)")
    return levels


def fpr_name(level: float) -> str:
    """1% -> "1pct", 0.1% -> "0.1pct" (the suffix of `<attack>_tpr_<level>` metrics)."""
    return f"{100 * level:g}pct"


def low_fpr_figures(positive: np.ndarray, negative: np.ndarray, levels: tuple[float, ...], prefix: str) -> dict[str, float]:
    """`<prefix>_tpr_<level>` for each level: TPR at that FPR of an attack whose score is higher for positives."""
    return {f"{prefix}_tpr_{fpr_name(f)}": attack_roc(positive, negative, f)["tpr_at_fpr"] for f in levels}
