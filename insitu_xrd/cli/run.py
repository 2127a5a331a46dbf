"""Placeholder: replaced by the owner of this command."""

import typer


def register(app: typer.Typer) -> None:
    pass
