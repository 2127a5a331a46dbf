"""insitu-xrd: operando powder diffraction of battery cathodes, from detector frames to strain curves."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("insitu-xrd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
