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
- Optional low-angle asymmetry: GSAS-II's SH/L, the Finger-Cox-Jephcoat (1994) axial-divergence
  convolution with S/L = H/L = SH/L / 2 (`fcj_nodes`).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "half_maximum_span",
    "EIGHT_LN2",
    "gaussian_variance_centideg2",
    "lorentzian_fwhm_centideg",
    "sample_broadening",
    "tch_fwhm_eta",
    "pseudo_voigt",
    "pseudo_voigt_dx0",
    "peak_fwhm_eta",
    "fcj_extent_deg",
    "fcj_node_count",
    "fcj_nodes",
    "fcj_pseudo_voigt",
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
    Either may be an array of one value per peak (anisotropic broadening: the effective values of
    `insitu_xrd.core.broadening`); a size that is inf or <= 0 adds no broadening.
    """
    th = np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0
    strain_fwhm = mustrain * 1e-6 * np.tan(th) * _RAD_TO_CENTIDEG
    if np.ndim(size_um) == 0:
        if np.isfinite(size_um) and size_um > 0:
            size_fwhm = wavelength_A / (size_um * 1e4 * np.cos(th)) * _RAD_TO_CENTIDEG
        else:
            size_fwhm = np.zeros_like(th)
    else:
        size = np.asarray(size_um, dtype=float)
        ok = np.isfinite(size) & (size > 0)
        size_fwhm = np.where(ok, wavelength_A / (np.where(ok, size, 1.0) * 1e4 * np.cos(th)) * _RAD_TO_CENTIDEG, 0.0)
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


@functools.lru_cache(maxsize=128)
def _gauss_legendre_01(n: int) -> tuple[np.ndarray, np.ndarray]:
    v, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (v + 1.0), 0.5 * w


def fcj_extent_deg(two_theta_deg: np.ndarray | float, sh_l: float) -> np.ndarray:
    """Length (deg) of the Finger-Cox-Jephcoat axial-divergence tail, |2theta - 2phi_min|.

    cos(2phi_min) = cos(2theta) sqrt(1 + (S/L + H/L)^2) (FCJ 1994 eq. 6, with GSAS-II's single
    parameter SH/L = S/L + H/L). About SH/L^2 / (2 tan 2theta) rad for small SH/L: it matters at low
    angle only. 0 where sh_l <= 0.
    """
    p = np.radians(np.minimum(np.asarray(two_theta_deg, dtype=float), 180.0 - np.asarray(two_theta_deg, dtype=float)))
    if sh_l <= 0:
        return np.zeros_like(p)
    cmin = np.minimum(np.sqrt(1.0 + sh_l * sh_l) * np.cos(p), 1.0)
    return np.degrees(p - np.arccos(cmin))


def fcj_node_count(two_theta_deg: np.ndarray | float, sh_l: float, fwhm_deg: np.ndarray | float) -> int:
    """Quadrature nodes that keep the FCJ profile within ~5e-4 of its maximum, from the largest
    ratio r = extent / FWHM: 1 (r < 0.005), 2 (r < 0.05), 3 (r < 0.2), else 3 + 3 r (at most 100)."""
    if sh_l <= 0:
        return 1
    ratio = np.asarray(fcj_extent_deg(two_theta_deg, sh_l)) / np.asarray(fwhm_deg, dtype=float)
    r = float(np.max(ratio, initial=0.0))
    if r < 0.005:
        return 1
    if r < 0.05:
        return 2
    if r < 0.2:
        return 3
    return int(min(100, np.ceil(3.0 + 3.0 * r)))


def fcj_nodes(
    two_theta_deg: np.ndarray | float, sh_l: float, n_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Finger, Cox & Jephcoat (1994, J. Appl. Cryst. 27, 892) axial-divergence asymmetry as in
    GSAS-II's CW profile (one parameter SH/L = S/L + H/L, S = H): the observed peak at 2theta is

        P(x) = int W(2phi) / (h(2phi) cos 2phi) pV(x - 2phi) d(2phi) / int W / (h cos 2phi),
        2phi_min <= 2phi <= 2theta,  h/L = sqrt(cos^2 2phi / cos^2 2theta - 1),  W/L = SH/L - h/L,

    i.e. a weighted sum of the symmetric pseudo-Voigt at angles below 2theta (above for
    2theta > 90 deg). The weight diverges as (2theta - 2phi)^-1/2 at the peak; with
    2phi = 2theta - D v^2 (D the tail length) the integrand is smooth in v and Gauss-Legendre in v
    converges fast (see `fcj_node_count`).

    Returns (shift_deg, weight), each (npeaks, n_nodes): P(x) = sum_j weight_j pV(x - 2theta - shift_j),
    weights summing to 1 (area kept). Without asymmetry (sh_l <= 0): shift 0, weight 1.
    """
    tth = np.atleast_1d(np.asarray(two_theta_deg, dtype=float))
    if sh_l <= 0:
        return np.zeros((tth.size, 1)), np.ones((tth.size, 1))
    v, w = _gauss_legendre_01(int(n_nodes))
    low = tth <= 90.0
    p = np.radians(np.where(low, tth, 180.0 - tth))[:, None]  # mirror: the tail points to 90 deg
    extent = np.radians(fcj_extent_deg(np.degrees(p[:, 0]), sh_l))[:, None]
    u = extent * v[None, :] ** 2  # 2theta - 2phi (rad)
    phi2 = p - u
    # cos^2(2phi) - cos^2(2theta) = sin(2theta - 2phi) sin(2theta + 2phi): accurate for small u
    root = np.sqrt(np.maximum(np.sin(u) * np.sin(p + phi2), 1e-300))
    f = np.abs(np.cos(p)) / root  # L / h
    g = np.maximum(sh_l * f - 1.0, 0.0) / np.cos(phi2)
    weight = w[None, :] * g * v[None, :]
    total = weight.sum(axis=1, keepdims=True)
    weight = np.where(total > 0, weight / np.where(total > 0, total, 1.0), 0.0)
    weight[total[:, 0] <= 0] = w / w.sum()  # extent below rounding: symmetric
    shift = np.degrees(np.where(low[:, None], -u, u))
    return shift, weight


def fcj_pseudo_voigt(
    x: np.ndarray, x0: float, fwhm: float, eta: float, sh_l: float, n_nodes: int | None = None
) -> np.ndarray:
    """Area-normalised pseudo-Voigt of one peak at x0 (deg 2theta) with the FCJ asymmetry `sh_l`
    (GSAS-II SH/L; see `fcj_nodes`). sh_l = 0 gives `pseudo_voigt`."""
    if sh_l <= 0:
        return pseudo_voigt(x, x0, fwhm, eta)
    n = n_nodes or fcj_node_count(x0, sh_l, fwhm)
    shift, weight = fcj_nodes(x0, sh_l, n)
    out = np.zeros_like(np.asarray(x, dtype=float))
    for s_j, w_j in zip(shift[0], weight[0]):
        out += w_j * pseudo_voigt(x, x0 + s_j, fwhm, eta)
    return out


def half_maximum_span(y: np.ndarray, peak_index: int, level: float) -> tuple[int, int]:
    """Indices (lo, hi) of the first samples at or below ``level`` walking left and right from
    ``peak_index`` (clipped to the array ends): the sampled full width at ``level`` of a peak."""
    lo = hi = int(peak_index)
    while lo > 0 and y[lo] > level:
        lo -= 1
    while hi < y.size - 1 and y[hi] > level:
        hi += 1
    return lo, hi
