"""Input checks shared by every fit; each failure is a FitError naming the offending input."""

from __future__ import annotations

import numpy as np

from analysis.errors import FitError


def as_finite(values: object, name: str) -> np.ndarray:
    """`values` as a 1-D float array; FitError naming `name` and the first bad row if any is NaN/inf."""
    try:
        array = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise FitError(f"{name}: values are not numeric") from None
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise FitError(f"{name}: {bad.size} non-finite value(s) (NaN or inf), first at row {bad[0]}")
    return array


def as_positive(values: object, name: str) -> np.ndarray:
    """Finite and > 0, as needed wherever a logarithm of `values` is taken."""
    array = as_finite(values, name)
    bad = np.flatnonzero(array <= 0)
    if bad.size:
        raise FitError(f"{name}: {bad.size} non-positive value(s) where a logarithm is taken, "
                       f"first at row {bad[0]} ({array[bad[0]]:g})")
    return array


def require_points(count: int, minimum: int, form: str) -> None:
    if count < minimum:
        raise FitError(f"{form}: {count} point(s) given, the fit needs at least {minimum}")


def require_spread(values: np.ndarray, name: str, minimum_distinct: int = 2) -> None:
    distinct = np.unique(values).size
    if distinct < minimum_distinct:
        what = "all values are equal" if distinct == 1 else f"only {distinct} distinct values"
        raise FitError(f"{name}: {what}; the fit needs at least {minimum_distinct} distinct values")


def same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FitError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))
