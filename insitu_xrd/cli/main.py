"""The `insitu-xrd` console script.

Each command lives in its own module of this package and exposes ``register(app)``; this
module only assembles them, so a command stays a thin function over library calls.
"""

from __future__ import annotations

import typer

from insitu_xrd import __version__

app = typer.Typer(
    name="insitu-xrd",
    help="Operando powder diffraction of battery cathodes: frames -> patterns -> lattice, "
    "microstrain, phase fractions -> strain curves for FEA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: The libraries whose versions decide the numbers (printed by ``--version``).
STACK = ("numpy", "scipy", "pyFAI", "fabio", "lmfit", "xarray", "h5py", "h5netcdf", "zarr", "pydantic", "typer",
         "matplotlib", "scikit-fem", "shapely", "dask")


def stack_versions() -> list[tuple[str, str]]:
    """(distribution, installed version or "not installed") for Python and :data:`STACK`."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = [("python", platform.python_version())]
    for dist in STACK:
        try:
            out.append((dist, version(dist)))
        except PackageNotFoundError:
            out.append((dist, "not installed"))
    return out


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"insitu-xrd {__version__}")
        typer.echo("  " + ", ".join(f"{name} {ver}" for name, ver in stack_versions()))
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and those of the numerical stack, and exit."
    ),
) -> None:
    """insitu-xrd command-line interface."""


from insitu_xrd.cli import (  # noqa: E402  (commands register themselves on the app)
    simulate,
    calibrate,
    integrate,
    refine,
    strain,
    fea,
    run,
)

for _module in (simulate, calibrate, integrate, refine, strain, fea, run):
    _module.register(app)
