"""Peak-profile functions in GSAS-II constant-wavelength (CW) conventions. Plain numpy.

Units (as in GSAS-II):
- U, V, W: Gaussian variance sigma^2 = U tan^2(theta) + V tan(theta) + W, in centidegrees^2.
- X, Y: Lorentzian FWHM gamma = X / cos(theta) + Y tan(theta), in centidegrees.
- Isotropic microstrain mu_S (dimensionless, x 1e-6): Lorentzian 2theta FWHM (rad) =
  mu_S * 1e-6 * tan(theta) when the Gauss/Lorentz mixing is 1 (GSAS-II default).
- Crystallite size in um, Scherrer K = 1: 2theta FWHM (rad) = lambda / (size * cos(theta)).
- For a mixing m, a fraction m of the sample FWHM is Lorentzian and (1 - m) Gaussian.
- Gaussian and Lorentzian parts combine into a pseudo-Voigt with the Thompson-Cox-Hastings
  (1987) FWHM and mixing formulas.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EIGHT_LN2",
    "gaussian_variance_centideg2",
    "lorentzian_fwhm_centideg",
    "sample_broadening",
    "tch_fwhm_eta",
    "pseudo_voigt",
    "pseudo_voigt_dx0",
    "peak_fwhm_eta",
    "berar_baldinozzi_factor",
]

EIGHT_LN2 = 8.0 * np.log(2.0)
_RAD_TO_CENTIDEG = 18000.0 / np.pi


def gaussian_variance_centideg2(two_theta_deg: np.ndarray, U: float, V: float, W: float) -> np.ndarray:
    """Instrumental Gaussian variance sigma^2 (centideg^2) from GSAS-II U, V, W."""
    t = np.tan(np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0)
    return U * t * t + V * t + W


def lorentzian_fwhm_centideg(two_theta_deg: np.ndarray, X: float, Y: float) -> np.ndarray:
    """Instrumental Lorentzian FWHM gamma (centideg) from GSAS-II X, Y."""
    th = np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0
    return X / np.cos(th) + Y * np.tan(th)


def sample_broadening(
    two_theta_deg: np.ndarray,
    wavelength_A: float,
    mustrain: float = 0.0,
    size_um: float = np.inf,
    mustrain_mix: float = 1.0,
    size_mix: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample contributions (sigma^2 in centideg^2, gamma in centideg) from microstrain and size.

    mustrain is GSAS-II's isotropic mu-strain (1e-6); size_um the isotropic crystallite size (um).
    """
    th = np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0
    strain_fwhm = mustrain * 1e-6 * np.tan(th) * _RAD_TO_CENTIDEG
    if np.isfinite(size_um) and size_um > 0:
        size_fwhm = wavelength_A / (size_um * 1e4 * np.cos(th)) * _RAD_TO_CENTIDEG
    else:
        size_fwhm = np.zeros_like(th)
    gamma = mustrain_mix * strain_fwhm + size_mix * size_fwhm
    sigma2 = ((1.0 - mustrain_mix) * strain_fwhm) ** 2 / EIGHT_LN2 + ((1.0 - size_mix) * size_fwhm) ** 2 / EIGHT_LN2
    return sigma2, gamma


def tch_fwhm_eta(fwhm_g: np.ndarray, fwhm_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thompson-Cox-Hastings total FWHM and Lorentzian fraction eta of a pseudo-Voigt.

    Inputs and output FWHM share one unit (any).
    """
    g = np.asarray(fwhm_g, dtype=float)
    l = np.asarray(fwhm_l, dtype=float)
    fwhm = (g**5 + 2.69269 * g**4 * l + 2.42843 * g**3 * l**2 + 4.47163 * g**2 * l**3 + 0.07842 * g * l**4 + l**5) ** 0.2
    q = np.divide(l, fwhm, out=np.zeros_like(fwhm), where=fwhm > 0)
    eta = 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3
    return fwhm, np.clip(eta, 0.0, 1.0)


def pseudo_voigt(x: np.ndarray, x0: np.ndarray | float, fwhm: np.ndarray | float, eta: np.ndarray | float) -> np.ndarray:
    """Area-normalised pseudo-Voigt eta*L + (1-eta)*G (per unit of x). Broadcasts."""
    dx = np.asarray(x, dtype=float) - x0
    u = (dx / fwhm) ** 2
    lor = (2.0 / np.pi) / fwhm / (1.0 + 4.0 * u)
    gau = np.sqrt(4.0 * np.log(2.0) / np.pi) / fwhm * np.exp(-4.0 * np.log(2.0) * u)
    return eta * lor + (1.0 - eta) * gau


def pseudo_voigt_dx0(x: np.ndarray, x0: np.ndarray | float, fwhm: np.ndarray | float, eta: np.ndarray | float) -> np.ndarray:
    """Derivative of `pseudo_voigt` with respect to the centre x0 (per unit of x^2)."""
    dx = np.asarray(x, dtype=float) - x0
    u = (dx / fwhm) ** 2
    c_l = (2.0 / np.pi) / fwhm
    c_g = np.sqrt(4.0 * np.log(2.0) / np.pi) / fwhm
    four_ln2 = 4.0 * np.log(2.0)
    d_lor = c_l * 8.0 * dx / fwhm**2 / (1.0 + 4.0 * u) ** 2
    d_gau = c_g * np.exp(-four_ln2 * u) * 2.0 * four_ln2 * dx / fwhm**2
    return eta * d_lor + (1.0 - eta) * d_gau


def peak_fwhm_eta(
    two_theta_deg: np.ndarray,
    wavelength_A: float,
    U: float,
    V: float,
    W: float,
    X: float,
    Y: float,
    mustrain: float = 0.0,
    size_um: float = np.inf,
    mustrain_mix: float = 1.0,
    size_mix: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Total pseudo-Voigt FWHM (deg 2theta) and eta at the given peak positions."""
    sig2 = gaussian_variance_centideg2(two_theta_deg, U, V, W)
    gam = lorentzian_fwhm_centideg(two_theta_deg, X, Y)
    s_sig2, s_gam = sample_broadening(two_theta_deg, wavelength_A, mustrain, size_um, mustrain_mix, size_mix)
    sig2 = np.maximum(sig2 + s_sig2, 1e-12)
    gam = np.maximum(gam + s_gam, 0.0)
    fwhm_g = np.sqrt(EIGHT_LN2 * sig2) / 100.0
    fwhm_l = gam / 100.0
    return tch_fwhm_eta(fwhm_g, fwhm_l)


def berar_baldinozzi_factor(
    x: np.ndarray, x0: np.ndarray | float, fwhm: np.ndarray | float, two_theta_deg: np.ndarray | float,
    asym_1: float, asym_2: float,
) -> np.ndarray:
    """Low-angle peak asymmetry of Berar & Baldinozzi (1993, J. Appl. Cryst. 26, 128), as used
    by FullProf/TOPAS: multiply a symmetric profile by

        1 + (asym_1 * Fa(z) + asym_2 * Fb(z)) / tan(theta),
        z = (x - x0) / fwhm,  Fa(z) = 2 z exp(-z^2),  Fb(z) = 2 (2 z^2 - 3) Fa(z).

    Fa and Fb are odd in z, so the peak area is unchanged. Only the 1/tan(theta) pair is offered:
    below 2theta ~ 20 deg the 1/tan(2theta) pair is almost proportional to it. Positive asym_1
    moves intensity to the low-angle side. The factor is clipped at 0.
    """
    z = (np.asarray(x, dtype=float) - x0) / fwhm
    fa = 2.0 * z * np.exp(-z * z)
    fb = 2.0 * (2.0 * z * z - 3.0) * fa
    tan_th = np.tan(np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0)
    return np.maximum(1.0 - (asym_1 * fa + asym_2 * fb) / tan_th, 0.0)
