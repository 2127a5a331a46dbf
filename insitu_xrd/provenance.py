"""Provenance recorded in the attrs of every result: software versions and creation time."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("insitu-xrd", "numpy", "scipy", "pyFAI", "fabio", "lmfit", "xarray", "h5netcdf", "gemmi", "xraydb")


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the numbers in a result."""
    return dict(_installed_versions())


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    # looked up once per process: ~10 package-metadata reads were most of the cost of storing one
    # frame's result in watch mode; the packages of a running process do not change
    versions = [("python", platform.python_version())]
    for name in _PACKAGES:
        try:
            versions.append((name, version(name)))
        except PackageNotFoundError:
            versions.append((name, "not installed"))
    return tuple(versions)


def software_versions_json() -> str:
    """`software_versions()` as a JSON string, for NetCDF attrs (which cannot hold dicts)."""
    return json.dumps(software_versions(), sort_keys=True)


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds, for `created_utc` attrs."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
