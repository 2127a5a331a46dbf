"""Peak widths of one phase's reflections: the arguments of `core.profiles.peak_fwhm_eta`.

`width_args`: the instrument's U, V, W, X, Y and the phase's isotropic microstrain and size;
`sample_widths`: the same with the microstrain and size replaced by one effective value per
reflection where the phase's model is anisotropic (uniaxial or generalized microstrain, uniaxial
size; `insitu_xrd.core.broadening`, GSAS-II conventions); `anisotropy_key`: what those extra
values depend on (a cache key for the widths). ``pd``: a `fit.model.PhaseData` (its name, spec,
phase and reflections).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from insitu_xrd.core.broadening import (cos_angle_to_axis, generalized_mustrain, stephens_names, uniaxial_mustrain,
                                        uniaxial_size_um)
from insitu_xrd.core.crystal import reciprocal_metric

__all__ = ["width_args", "anisotropy_key", "sample_widths"]


def width_args(p: str, vals: dict[str, float]) -> tuple:
    """Arguments of `peak_fwhm_eta` after the Bragg angles and wavelength for phase ``p``
    (isotropic sample broadening; see `sample_widths` for the anisotropic models)."""
    size = vals.get(f"{p}_size_um", np.inf)
    return (vals["U"], vals["V"], vals["W"], vals["X"], vals["Y"],
            vals.get(f"{p}_mustrain", 0.0), size if size > 0 else np.inf,
            vals.get(f"{p}_mustrain_mix", 1.0), vals.get(f"{p}_size_mix", 1.0))


def anisotropy_key(pd: Any, vals: dict[str, float]) -> tuple:
    """The values the anisotropic broadening of a phase depends on besides `width_args` (cache key)."""
    spec, p = pd.spec, pd.name
    key: tuple = ()
    if spec.mustrain_model == "uniaxial":
        key += (vals.get(f"{p}_mustrain_axial", 0.0),)
    elif spec.mustrain_model == "generalized":
        key += tuple(vals.get(f"{p}_mustrain_{n}", 0.0) for n in stephens_names(pd.phase.spacegroup))
    if spec.size_model == "uniaxial":
        key += (vals.get(f"{p}_size_axial_um", np.inf),)
    return key


def sample_widths(pd: Any, vals: dict[str, float], cell: tuple[float, ...], d: np.ndarray) -> tuple:
    """`width_args` with the microstrain and size replaced by one effective value per reflection
    where the phase's model is anisotropic (`insitu_xrd.core.broadening`, GSAS-II conventions)."""
    args = list(width_args(pd.name, vals))
    spec, p = pd.spec, pd.name
    if spec.mustrain_model == "isotropic" and spec.size_model == "isotropic":
        return tuple(args)
    gs = reciprocal_metric(cell)
    if spec.mustrain_model == "uniaxial":
        cos_p = cos_angle_to_axis(pd.hkl, spec.mustrain_axis, gs)
        args[5] = uniaxial_mustrain(cos_p, vals.get(f"{p}_mustrain", 0.0), vals.get(f"{p}_mustrain_axial", 0.0))
    elif spec.mustrain_model == "generalized":
        names = stephens_names(pd.phase.spacegroup)
        args[5] = generalized_mustrain(pd.phase.spacegroup, pd.hkl, d, [vals.get(f"{p}_mustrain_{n}", 0.0) for n in names])
    if spec.size_model == "uniaxial":
        cos_s = cos_angle_to_axis(pd.hkl, spec.size_axis, gs)
        args[6] = uniaxial_size_um(cos_s, vals.get(f"{p}_size_um", 1.0), vals.get(f"{p}_size_axial_um", 1.0))
    return tuple(args)
