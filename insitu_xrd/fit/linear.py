"""Linear parameters with a physical sign: which they are, and the bounded least-squares solve.

Phase scales, hump and diffuse areas and the Le Bail phase multipliers are amounts: a negative
value is unphysical (a diffuse area of -3.4 +/- 4.1 only says the component is not needed).
`Problem.solve_linear` (insitu_xrd.fit.model) keeps them >= 0: its unconstrained solution is used
whenever it is feasible, else `nonnegative_lstsq`. A coefficient held at 0 is then a parameter
at its bound (esd NaN, listed in ``at_bounds``), and the variable-projection Jacobian and the
covariance treat its column as fixed (`Problem.at_zero`). Background Chebyshev coefficients have
no sign and stay free.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.optimize import lsq_linear

__all__ = ["is_nonnegative", "nonnegative_lstsq"]

_SIGNED = re.compile(r"^(bkg_hump\d+_area|diff_.+_area|.+_scale|.+_lebail_k)$")


def is_nonnegative(name: str) -> bool:
    """A linear parameter with a physical sign (>= 0): phase scales, hump areas, diffuse
    areas, Le Bail phase multipliers."""
    return bool(_SIGNED.match(name))


def nonnegative_lstsq(A: np.ndarray, b: np.ndarray, nonneg: np.ndarray) -> np.ndarray:
    """Least-squares solution of A x ~ b with x_j >= 0 where ``nonneg`` (the others free), by
    bounded-variable least squares; the coefficients at the bound are exactly 0 and the others
    are the unconstrained solution with those columns removed (the same linear algebra as an
    unconstrained solve of that subproblem)."""
    lb = np.where(nonneg, 0.0, -np.inf)
    x = lsq_linear(A, b, bounds=(lb, np.full(len(lb), np.inf)), method="bvls").x
    at_bound = nonneg & (x <= 0.0)
    keep = ~at_bound
    out = np.zeros(A.shape[1])
    if keep.any():
        sub = np.linalg.lstsq(A[:, keep], b, rcond=None)[0]
        if np.all(sub[nonneg[keep]] >= 0.0):
            out[keep] = sub
        else:  # (rounding at the edge of the feasible set) the bounded solution itself
            out = np.where(at_bound, 0.0, x)
    return out
