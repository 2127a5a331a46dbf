"""`insitu-xrd calibrate`: automatic detector-geometry calibration from a calibrant image."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from insitu_xrd.errors import InsituXRDError


class Flip(str, Enum):
    none = "none"
    vertical = "vertical"
    horizontal = "horizontal"


def _read_array(path: Path, what: str) -> np.ndarray:
    """First frame of an image file (any fabio format) or a .npy array."""
    if not path.is_file():
        raise InsituXRDError(f"{what} {path} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path)
        import fabio

        return np.asarray(fabio.open(str(path)).data)
    except Exception as exc:
        raise InsituXRDError(f"cannot read {what} {path}: {exc}") from None


def _flip(arr: np.ndarray, flip: Flip) -> np.ndarray:
    if flip is Flip.vertical:
        return np.flipud(arr)
    if flip is Flip.horizontal:
        return np.fliplr(arr)
    return arr


def calibrate(
    image: Path = typer.Argument(..., help="Calibrant image (TIFF, EDF, CBF, ... any fabio format; or .npy)."),
    calibrant: str = typer.Option(
        ..., "--calibrant", help="Calibrant: CeO2, Ni, LaB6, Si, Al (rings from the cubic cell), any pyFAI "
        "calibrant name, or a path to a pyFAI .D file of d-spacings (A)."
    ),
    wavelength_a: float = typer.Option(..., "--wavelength-a", help="X-ray wavelength in angstrom (kept fixed)."),
    detector: str = typer.Option(..., "--detector", help="pyFAI detector name, e.g. Perkin, Pilatus1M, Eiger2_4M."),
    output: Path = typer.Option(..., "-o", "--output", help="PONI file to write."),
    distance_mm: Optional[float] = typer.Option(
        None, "--distance-mm", help="Rough sample-detector distance in mm (searched +/-25 %); omitted: 20 mm-5 m is searched."
    ),
    center_px: Optional[tuple[float, float]] = typer.Option(
        None, "--center-px", help="Rough direct-beam centre X Y in pixels (column, row); omitted: found from ring symmetry."
    ),
    mask: Optional[Path] = typer.Option(
        None, "--mask", help="Mask image (non-zero = ignore pixel), same shape as the image. Pixels < 0 are always masked."
    ),
    flip: Flip = typer.Option(
        Flip.none, "--flip", help="Flip the image (and mask) before calibrating, e.g. 'vertical' to match Dioptas, "
        "which displays and calibrates images upside down; the PONI then refers to the flipped image."
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Diagnostic PNG (image with the fitted rings, residual per ring); default: the PONI path "
        "with .png (geometry.poni -> geometry.png)."
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no diagnostic PNG."),
    center_search_px: float = typer.Option(60.0, "--center-search-px", help="Search radius around --center-px in pixels."),
) -> None:
    """Refine the detector geometry from a calibrant image and write a PONI file."""
    from rich.console import Console

    err = Console(stderr=True)
    if plot is None and not no_plot:
        plot = output.with_suffix(".png")
    if no_plot:
        plot = None
    try:
        from insitu_xrd.reduction.calibrate import calibrate_image

        img = _flip(_read_array(image, "image"), flip)
        mask_arr = None if mask is None else _flip(_read_array(mask, "mask"), flip) != 0
        with err.status("calibrating ...") as status:
            result = calibrate_image(
                img, calibrant, wavelength_a, detector, distance_mm=distance_mm,
                center_px=tuple(center_px) if center_px else None, mask=mask_arr,
                center_search_px=center_search_px, progress=lambda msg: status.update(msg),
            )
        result.write_poni(output)
        if plot is not None:
            from insitu_xrd.plots.calibration import plot_calibration

            plot_calibration(img, result, plot)
    except InsituXRDError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(result.summary())
    typer.echo(f"poni_file            {output}")
    if plot is not None:
        typer.echo(f"diagnostic_plot      {plot}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
