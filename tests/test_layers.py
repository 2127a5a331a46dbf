"""Layering: dependencies point down only (numerical core <- I/O <- pipeline <- CLI and plots).

Every ``insitu_xrd.*`` import in every module, lazy imports inside functions included, must go to
the same or a lower layer; the numerical core and the fit engine must not touch files or labelled
I/O libraries (labelled xarray results are fine).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "insitu_xrd"

# lower number = lower layer; errors/provenance are leaf utilities usable everywhere
LAYER = {
    "errors": 0, "provenance": 0,
    "core": 1, "fit": 2,
    "io": 3,
    "reduction": 4, "simulate": 4,
    "pipeline": 5,
    "plots": 6, "cli": 7,
}
# file, detector and plotting libraries the numerical layers must not import (xarray is allowed:
# a fit result labels itself with .to_dataset(); writing it is the I/O layer's job)
IO_LIBRARIES = {"fabio", "h5py", "hdf5plugin", "h5netcdf", "netCDF4", "yaml", "matplotlib", "pyFAI"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    layer = _layer_of(path)
    if layer not in LAYER:  # __init__.py of the package, __main__
        return
    for lineno, module in _imports(path):
        parts = module.split(".")
        if parts[0] == "insitu_xrd" and len(parts) > 1 and parts[1] in LAYER:
            target = parts[1]
            assert LAYER[target] <= LAYER[layer], (
                f"{path.relative_to(PACKAGE)}:{lineno} ({layer}) imports {module} ({target}), a higher layer")
        if layer in ("core", "fit"):
            assert parts[0] not in IO_LIBRARIES, (
                f"{path.relative_to(PACKAGE)}:{lineno}: the numerical layer {layer} imports {module} (file/IO library)")
