"""Sample absorption, polarization and the geometry's intensity and position terms. Plain numpy.

Geometries (``Instrument.geometry``):

- ``debye_scherrer``: a cylinder (capillary) in a beam wider than it, any detector. Absorption:
  the cylinder transmission factor A(2theta, muR) computed by numerical quadrature of its
  definition (`cylinder_transmission`: the mean over the cross-section of exp(-mu (l_in + l_out))),
  the quantity tabulated in International Tables for Crystallography Vol. C, Table 6.3.3.1; no
  approximation formula (GSAS-II uses the Lobanov & alte da Veiga fit to the same tables).
  Peak shift of a sample displaced by ``displacement_um`` towards a flat detector at
  ``distance_mm``: d(2theta) = -(s/D) sin(2theta) cos(2theta) (rad).
- ``transmission``: a flat plate (pellet, coin or pouch cell) normal to the beam, thickness t
  (`plate_transmission`, valid for 2theta < 90 deg): (exp(-mu t) - exp(-mu t / cos 2theta)) /
  (mu t (1/cos 2theta - 1)), the same integral GSAS-II's "Fixed" flat-plate form evaluates.
  Displacement as for ``debye_scherrer`` (flat area detector).
- ``bragg_brentano``: symmetric reflection from a thick flat specimen: absorption 1/(2 mu), the same
  at every angle (absorbed by the scale). Peak shifts (`bragg_brentano_shift_deg`, GSAS-II
  ``Shift`` and ``Transparency``): specimen displacement s (um, along the specimen normal)
  d(2theta) = -2 s cos(theta) / R, transparency d(2theta) = -sin(2theta) / (2 mu_eff R), R the
  goniometer radius (mm).

Polarization (GSAS-II ``Polariz.``, in-plane azimuth 0): P + (1 - P) cos^2(2theta); P = 0.5 for an
unpolarised tube, 1/(1 + cos^2 2theta_m) behind a monochromator at 2theta_m, ~0.99 for a
synchrotron beam. Integrated 2D data have it divided out already (it is then not applied).
"""

from __future__ import annotations

import numpy as np

__all__ = ["GEOMETRIES", "cylinder_transmission", "plate_transmission", "polarization_factor",
           "bragg_brentano_shift_deg"]

GEOMETRIES = ("debye_scherrer", "bragg_brentano", "transmission")

# Quadrature of the unit disk: Gauss-Legendre in r (weight r dr), midpoint rule in the azimuth
# (periodic). 48 x 96 points; relative error against a 1D quadrature of the exact 2theta = 0 case
# (the worst angle): 2e-8 at muR = 0.1, 7e-7 at 1, 3e-5 at 3, 2.4e-4 at 5 (tests check muR <= 3).
_N_RADIAL, _N_AZIMUTH = 48, 96


def _disk_nodes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(_N_RADIAL)
    r = 0.5 * (t + 1.0)
    wr = 0.5 * w * r
    phi = (np.arange(_N_AZIMUTH) + 0.5) * (2.0 * np.pi / _N_AZIMUTH)
    rr, pp = np.meshgrid(r, phi, indexing="ij")
    weights = np.repeat(wr[:, None], _N_AZIMUTH, axis=1) * (2.0 * np.pi / _N_AZIMUTH) / np.pi
    return (rr * np.cos(pp)).ravel(), (rr * np.sin(pp)).ravel(), weights.ravel()


_DISK_X, _DISK_Y, _DISK_W = _disk_nodes()
# path from the entry point to (x, y) for a beam along +x (unit radius)
_DISK_L_IN = _DISK_X + np.sqrt(np.clip(1.0 - _DISK_Y**2, 0.0, None))
_DISK_R2 = _DISK_X**2 + _DISK_Y**2


def cylinder_transmission(two_theta_deg: np.ndarray, muR: float) -> np.ndarray:
    """Transmission factor A (0 < A <= 1) of a cylinder of radius R and linear absorption mu for
    scattering angles ``two_theta_deg`` (deg), muR dimensionless: the mean over the cross-section
    of exp(-mu (l_in + l_out)). A = 1 at muR = 0; A ~ 1 - 16 muR / (3 pi) for small muR."""
    tth = np.asarray(two_theta_deg, dtype=float)
    if muR == 0.0:
        return np.ones_like(tth)
    flat = np.radians(tth.ravel())
    out = np.empty(flat.shape)
    for i0 in range(0, len(flat), 256):  # chunks: (256, 4608) doubles at most
        c = flat[i0:i0 + 256, None]
        s = _DISK_X * np.cos(c) + _DISK_Y * np.sin(c)
        l_out = -s + np.sqrt(np.clip(s * s + 1.0 - _DISK_R2, 0.0, None))
        out[i0:i0 + 256] = np.exp(-muR * (_DISK_L_IN + l_out)) @ _DISK_W
    return out.reshape(tth.shape)


def plate_transmission(two_theta_deg: np.ndarray, mut: float) -> np.ndarray:
    """Transmission factor of a flat plate of thickness t normal to the incident beam, for
    2theta < 90 deg (deg; mut = mu t dimensionless): the mean over the depth z of
    exp(-mu z - mu (t - z) / cos 2theta). exp(-mu t) at 2theta = 0."""
    tth = np.radians(np.asarray(two_theta_deg, dtype=float))
    if mut == 0.0:
        return np.ones_like(tth)
    inv_cos = 1.0 / np.maximum(np.cos(tth), 1e-6)
    x = mut * (inv_cos - 1.0)
    # exp(-mu t) (1 - exp(-x)) / x, with its limit 1 at x -> 0
    ratio = np.where(x > 1e-12, -np.expm1(-x) / np.where(x > 1e-12, x, 1.0), 1.0 - 0.5 * x)
    return np.exp(-mut) * ratio


def polarization_factor(two_theta_deg: np.ndarray, polarization: float) -> np.ndarray:
    """GSAS-II polarization P + (1 - P) cos^2(2theta) (azimuth 0; P = ``Polariz.``)."""
    c = np.cos(np.radians(np.asarray(two_theta_deg, dtype=float)))
    return polarization + (1.0 - polarization) * c * c


def bragg_brentano_shift_deg(two_theta_deg: np.ndarray, displacement_um: float, transparency_mm: float,
                             goniometer_radius_mm: float) -> np.ndarray:
    """Bragg-Brentano peak shift (deg): specimen displacement s (um; positive s shifts peaks to
    lower angles, GSAS-II's ``Shift`` sign) -2 s cos(theta) / R, and transparency
    -sin(2theta) t / (2 R), t = 1/mu_eff (mm); R the goniometer radius (mm)."""
    tth = np.radians(np.asarray(two_theta_deg, dtype=float))
    rad = -(2.0 * displacement_um * 1e-3 * np.cos(tth / 2.0) + 0.5 * transparency_mm * np.sin(tth)) / goniometer_radius_mm
    return np.degrees(rad)
