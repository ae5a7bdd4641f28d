"""Pure functions of the white-box probing attacks on LMs (`unlearn/attacks/logit_lens.py`, `probe.py`,
`ablate.py`, `fewshot.py`): per-answer scores from per-token values, and the difference-of-means direction and its
projection (Łucki et al. 2024, "An adversarial perspective on machine unlearning for AI safety")."""
from __future__ import annotations

import numpy as np
import torch


def answer_scores(logp: torch.Tensor, correct: torch.Tensor, example: torch.Tensor) -> tuple[float, float]:
    """(answer probability, token accuracy) of answers scored token by token, as the task's forget_prob and
    exact_memorization: the mean over answers of exp(mean token log-probability), and the mean over answers of the
    share of their tokens whose argmax is the label. logp, correct, example: (n,) per answer token, `example`
    naming its answer."""
    logp, correct = np.asarray(logp, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    _, which, counts = np.unique(np.asarray(example), return_inverse=True, return_counts=True)
    if not counts.size:
        return float("nan"), float("nan")
    mean = lambda v: np.bincount(which, weights=v, minlength=counts.size) / counts  # noqa: E731
    return float(np.mean(np.exp(mean(logp)))), float(np.mean(mean(correct)))


def difference_of_means(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The unit vector along mean(a) − mean(b) over the rows of a (n, H) and b (m, H); zero if the means agree."""
    d = a.float().mean(0) - b.float().mean(0)
    norm = d.norm()
    return d / norm if norm > 0 else d


def project_out(h: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """h − (h·r)r for a unit vector r along h's last dimension: h with no component along r."""
    r = direction.to(h.dtype)
    return h - (h @ r)[..., None] * r
