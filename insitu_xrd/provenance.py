"""Provenance recorded in the attrs of every result: software versions and creation time."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("insitu-xrd", "numpy", "scipy", "pyFAI", "fabio", "lmfit", "xarray", "h5netcdf", "gemmi", "xraydb")


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the numbers in a result."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def software_versions_json() -> str:
    """`software_versions()` as a JSON string, for NetCDF attrs (which cannot hold dicts)."""
    return json.dumps(software_versions(), sort_keys=True)


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds, for `created_utc` attrs."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
