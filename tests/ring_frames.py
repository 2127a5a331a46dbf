"""Small synthetic detector series for the integration tests: Poisson frames of known rings.

The expectation image is pyFAI's ``calcfrom1d`` of a flat background plus Gaussian rings, so every
integrated frame scatters around a known curve; frame times are in the TIFF headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import fabio
import numpy as np

from insitu_xrd.io.poni import write_poni

PIXEL_M = 8e-4
WAVELENGTH_A = 0.1173


def write_ring_series(root: Path, shape: tuple[int, int], n_frames: int, rings_deg: Sequence[tuple[float, float, float]],
                      seed: int, bad_frame: int | None = None, tth_max_deg: float = 16.0,
                      gain_per_frame: float = 0.0) -> dict:
    """Write ``frame_0000.tif`` ... into ``root/frames`` and ``root/geo.poni``.

    rings_deg: (centre 2theta deg, height counts/pixel, sigma deg) per ring, over 300 counts.
    bad_frame: index of a frame overwritten with garbage (an error record).
    gain_per_frame: relative intensity increase per frame (frames differ: 0 = identical statistics).
    Returns {"root", "poni", "frames", "data"} (data: the written images).
    """
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = Detector(pixel1=PIXEL_M, pixel2=PIXEL_M, max_shape=shape)
    ai = AzimuthalIntegrator(dist=0.5, poni1=0.2 * shape[0] * PIXEL_M, poni2=0.25 * shape[1] * PIXEL_M, rot1=0.01,
                             detector=det, wavelength=WAVELENGTH_A * 1e-10)
    tth = np.linspace(0.0, tth_max_deg, 2000)
    curve = np.full_like(tth, 300.0)
    for centre, height, sigma in rings_deg:
        curve += height * np.exp(-0.5 * ((tth - centre) / sigma) ** 2)
    expected = ai.calcfrom1d(tth, curve, shape=shape, dim1_unit="2th_deg", correctSolidAngle=True,
                             polarization_factor=0.99)
    poni = write_poni(ai, root / "geo.poni")
    fdir = root / "frames"
    fdir.mkdir()
    rng = np.random.default_rng(seed)
    data = []
    for i in range(n_frames):
        img = rng.poisson(expected * (1.0 + gain_per_frame * i)).astype(np.int32)
        data.append(img)
        fabio.tifimage.TifImage(data=img, header={"time_s": f"{2.0 * i}"}).write(str(fdir / f"frame_{i:04d}.tif"))
    if bad_frame is not None:
        (fdir / f"frame_{bad_frame:04d}.tif").write_bytes(b"not an image" * 40)
    return {"root": root, "poni": poni, "frames": fdir, "data": data}
