"""The Patterns Dataset (output of ``insitu-xrd integrate``): create, validate, read, export.

Layout (agreed interface, see the project brief):

* dims ``frame`` x ``two_theta`` (deg), or ``frame`` x ``q`` (1/A) when ``attrs["unit"]`` is
  ``"q_A^-1"``;
* coords ``frame`` (int), ``two_theta`` / ``q``, ``time_s`` (frame, float, NaN if unknown),
  ``frame_name`` (frame, str); additionally ``frame_key`` (absolute path[:index], used to resume)
  and ``epoch_s`` (absolute Unix time of the frame, NaN if unknown);
* data ``intensity`` and ``sigma`` (frame, radial), ``status`` (frame, str: "ok" or
  "error: <reason>"); optional ``n_pixels`` (frame, radial: pixels per bin) and, with
  ``--cake``, ``cake_intensity``/``cake_sigma`` (frame, chi, radial; chi in deg);
* attrs ``wavelength_A``, ``unit``, ``poni`` (PONI text), ``polarization_factor``,
  ``corrections`` (JSON), ``method``, ``software_versions`` (JSON), ``created_utc``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from insitu_xrd.errors import InsituXRDError
from insitu_xrd.io.pattern_files import (
    Pattern1D,
    q_invA_to_two_theta_deg,
    two_theta_deg_to_q_invA,
    write_xye,
)
from insitu_xrd.io.store import FrameStore, load_netcdf

__all__ = [
    "UNITS",
    "radial_name",
    "open_patterns_store",
    "read_patterns",
    "validate_patterns",
    "ok_frames",
    "two_theta_deg_axis",
    "pattern_from_dataset",
    "export_xye",
]

#: supported units -> name of the radial dimension
UNITS = {"2th_deg": "two_theta", "q_A^-1": "q"}

_PER_FRAME_VARS = {"time_s": (), "epoch_s": (), "frame_name": (), "status": ()}


def radial_name(unit: str) -> str:
    """Radial dimension name for a unit: "two_theta" (2th_deg) or "q" (q_A^-1)."""
    try:
        return UNITS[unit]
    except KeyError:
        raise InsituXRDError(f"unit {unit!r}: must be one of {', '.join(UNITS)}") from None


def open_patterns_store(
    path: str | Path,
    radial: np.ndarray,
    unit: str,
    attrs: Mapping[str, Any],
    signature: Mapping[str, Any] | None = None,
    cake_chi_deg: np.ndarray | None = None,
    with_counts: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    checkpoint_every_frames: int = 100,
    checkpoint_every_s: float = 10.0,
    working: str = "zarr",
    chunk_frames: int | None = None,
) -> FrameStore:
    """A :class:`FrameStore` laid out as a Patterns Dataset (resumes an existing file).

    Args:
        path: output NetCDF.
        radial: bin centres (deg for 2th_deg, 1/A for q_A^-1).
        unit: "2th_deg" or "q_A^-1".
        attrs: Dataset attrs (wavelength_A, poni, ...); ``unit`` is added.
        signature: settings that must match to resume (default: attrs except provenance).
        cake_chi_deg: azimuth bin centres (deg) to store a 2D cake per frame; None: no cake.
        with_counts: store ``n_pixels`` (pixels contributing per bin).
        working: "zarr" (default: the records live in ``<stem>.zarr``, cost per checkpoint flat
            in the series length; ``path`` is exported when the store closes) or "netcdf" (the
            whole file rewritten at each checkpoint). See :mod:`insitu_xrd.io.store`.
        chunk_frames: frames per Zarr chunk (default: ``checkpoint_every_frames``).

    Records are appended with keys ``FrameRef.key`` and values among: intensity, sigma,
    n_pixels, cake_intensity, cake_sigma, time_s, epoch_s, frame_name, status.
    """
    rname = radial_name(unit)
    if working == "zarr":
        try:
            import zarr  # noqa: F401
        except ImportError:  # a dependency of insitu-xrd; without it: the whole-file NetCDF store
            import warnings

            warnings.warn("zarr is not installed: patterns are checkpointed by rewriting the whole NetCDF file "
                          "(cost grows with the series; pip install zarr)", RuntimeWarning, stacklevel=2)
            working = "netcdf"
    variables: dict[str, tuple[str, ...]] = {"intensity": (rname,), "sigma": (rname,), **_PER_FRAME_VARS}
    axes: dict[str, np.ndarray] = {rname: np.asarray(radial, dtype=float)}
    dtypes: dict[str, Any] = {"intensity": np.float64, "sigma": np.float64, "status": str, "frame_name": str}
    if with_counts:
        variables["n_pixels"] = (rname,)
        dtypes["n_pixels"] = np.float32
    if cake_chi_deg is not None:
        axes["chi"] = np.asarray(cake_chi_deg, dtype=float)
        variables["cake_intensity"] = ("chi", rname)
        variables["cake_sigma"] = ("chi", rname)
        dtypes["cake_intensity"] = np.float32  # a cake per frame is large; 7 digits are plenty
        dtypes["cake_sigma"] = np.float32
    all_attrs = dict(attrs)
    all_attrs["unit"] = unit
    if signature is None:
        signature = {k: v for k, v in all_attrs.items()
                     if k not in ("software_versions", "created_utc", "time_zero_epoch_s")}
    return FrameStore(
        path,
        variables=variables,
        axes=axes,
        coords=("time_s", "epoch_s", "frame_name"),
        attrs=all_attrs,
        signature=signature,
        dtypes=dtypes,
        resume=resume,
        overwrite=overwrite,
        checkpoint_every_frames=checkpoint_every_frames,
        checkpoint_every_s=checkpoint_every_s,
        working=working,
        chunk_frames=chunk_frames,
    )


def validate_patterns(ds: Any, source: str = "<dataset>") -> None:
    """Check a Dataset follows the Patterns interface; raise InsituXRDError naming what is missing."""
    unit = ds.attrs.get("unit")
    if unit not in UNITS:
        raise InsituXRDError(f"patterns {source}: attr 'unit' is {unit!r}, expected one of {', '.join(UNITS)}")
    rname = UNITS[unit]
    missing = [n for n in ("intensity", "sigma", "status", "time_s", "frame_name", rname) if n not in ds.variables]
    if missing:
        raise InsituXRDError(f"patterns {source}: missing {', '.join(missing)} (not an insitu-xrd patterns file?)")
    if ds["intensity"].dims != ("frame", rname):
        raise InsituXRDError(f"patterns {source}: intensity has dims {ds['intensity'].dims}, expected ('frame', {rname!r})")
    if "wavelength_A" not in ds.attrs:
        raise InsituXRDError(f"patterns {source}: attr 'wavelength_A' missing")


def read_patterns(path: str | Path) -> Any:
    """Load a Patterns Dataset from NetCDF, or from a Zarr working store (a ``.zarr`` folder),
    into memory and validate it.

    Raises:
        InsituXRDError: missing/unreadable file or a file of another layout.
    """
    import xarray as xr

    path = Path(path)
    if path.suffix == ".zarr" and path.is_dir():
        from insitu_xrd.io.store import open_frame_dataset

        try:
            ds = open_frame_dataset(path, load=True)
        except Exception as exc:
            raise InsituXRDError(f"patterns store {path}: cannot be read as Zarr ({type(exc).__name__}: {exc})") from None
        validate_patterns(ds, str(path))
        return ds
    ds = load_netcdf(path, "patterns file")
    validate_patterns(ds, str(path))
    return ds


def ok_frames(ds: Any) -> Any:
    """The frames of a Patterns Dataset whose status is "ok"."""
    ok = np.array([str(s) == "ok" for s in ds["status"].values], dtype=bool)
    return ds.isel(frame=np.flatnonzero(ok))


def two_theta_deg_axis(ds: Any) -> np.ndarray:
    """The radial axis as 2theta in degrees (converted from q with ``wavelength_A`` if needed)."""
    if ds.attrs.get("unit") == "q_A^-1":
        return q_invA_to_two_theta_deg(ds["q"].values, float(ds.attrs["wavelength_A"]))
    return np.asarray(ds["two_theta"].values, dtype=float)


def pattern_from_dataset(ds: Any, frame: int) -> Pattern1D:
    """One frame of a Patterns Dataset as a :class:`Pattern1D` on 2theta (empty bins dropped)."""
    sub = ds.isel(frame=int(frame))
    tth = two_theta_deg_axis(ds)
    inten = np.asarray(sub["intensity"].values, dtype=float)
    sig = np.asarray(sub["sigma"].values, dtype=float)
    good = np.isfinite(tth) & np.isfinite(inten) & np.isfinite(sig)
    meta = {
        "frame_name": str(sub["frame_name"].values),
        "time_s": float(sub["time_s"].values),
        "status": str(sub["status"].values),
        "sigma_source": "pyFAI poisson error model",
        "x_unit_in_file": ds.attrs.get("unit"),
    }
    return Pattern1D(tth[good], inten[good], sig[good], float(ds.attrs["wavelength_A"]), None, meta)


def export_xye(ds: Any, directory: str | Path, frames: Sequence[int] | None = None) -> list[Path]:
    """Write one ``<frame_name>.xye`` per ok frame (2theta deg, I, sigma; q converted).

    The header carries frame name, time_s, wavelength and the PONI, so GSAS-II/TOPAS users keep
    the provenance. Returns the written paths.
    """
    directory = Path(directory)
    out = []
    idx = range(ds.sizes["frame"]) if frames is None else frames
    for i in idx:
        status = str(ds["status"].values[i])
        if status != "ok":
            continue
        pat = pattern_from_dataset(ds, i)
        name = str(ds["frame_name"].values[i]).replace(":", "_")
        stem = name.rsplit(".", 1)[0] if "." in name else name
        header = [
            f"insitu-xrd integrate: frame {ds['frame_name'].values[i]}",
            f"time_s={float(ds['time_s'].values[i])!r}",
            f"unit in dataset: {ds.attrs.get('unit')}; polarization and solid angle removed",
            f"corrections: {ds.attrs.get('corrections', '')}",
        ]
        out.append(write_xye(directory / f"{stem}.xye", pat.two_theta_deg, pat.intensity, pat.sigma,
                             header_lines=header, wavelength_A=pat.wavelength_A))
    return out


def corrections_dict(ds: Any) -> dict[str, Any]:
    """The ``corrections`` attr parsed from JSON ({} if absent)."""
    text = ds.attrs.get("corrections")
    return json.loads(text) if text else {}


# keep helpers importable for q <-> 2theta users of this module
__all__ += ["corrections_dict", "two_theta_deg_to_q_invA"]
