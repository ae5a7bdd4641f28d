"""Input checks every public metric function shares.

- `as_array(x, "name", ("N",))` converts to float64 and checks the documented shape: symbolic dimensions
  (strings) must agree across the arrays of one call (pass the same `dims` dict), integers must match
  exactly, `None` matches anything. A mismatch raises ShapeError naming the expected and the received shape.
- `nan_if_not_finite` decorates a metric returning a float: any non-finite input array makes it return NaN
  (a diverged model's metric is NaN, never a number and never an exception).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from unlearn.errors import ShapeError

Dim = int | str | None


def as_array(values: Any, name: str, shape: Sequence[Dim], dims: dict[str, int] | None = None,
             dtype=np.float64) -> np.ndarray:
    """`values` as an array of `dtype`, checked against `shape` (see the module docstring)."""
    array = np.asarray(values, dtype=dtype)
    expected = "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"
    if array.ndim != len(shape):
        raise ShapeError(f"{name} must have shape {expected}, got {tuple(array.shape)}")
    dims = {} if dims is None else dims
    for axis, (want, got) in enumerate(zip(shape, array.shape)):
        if want is None:
            continue
        if isinstance(want, str):
            if dims.setdefault(want, got) != got:
                raise ShapeError(f"{name} must have shape {expected} with {want}={dims[want]} (from the other "
                                 f"inputs), got {tuple(array.shape)}")
        elif want != got:
            raise ShapeError(f"{name} must have shape {expected}, got {tuple(array.shape)}")
    return array


def all_finite(*arrays: Any) -> bool:
    """True when every numeric entry of every array (or scalar) is finite."""
    for a in arrays:
        if a is None:
            continue
        array = np.asarray(a)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return False
    return True


def nan_if_not_finite(metric: Callable[..., Any]) -> Callable[..., Any]:
    """Make a float-valued metric return NaN when any array argument holds NaN or ±inf."""

    @functools.wraps(metric)
    def wrapper(*args, **kwargs):
        arrays = [a for a in (*args, *kwargs.values()) if isinstance(a, (np.ndarray, list, tuple)) or np.isscalar(a)]
        numeric = [a for a in arrays if not isinstance(a, str) and _numeric(a)]
        if not all_finite(*numeric):
            return float("nan")
        return metric(*args, **kwargs)

    return wrapper


def _numeric(a: Any) -> bool:
    try:
        return np.asarray(a).dtype.kind in "fciu"
    except (ValueError, TypeError):
        return False
