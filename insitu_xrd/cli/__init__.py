"""Command-line interface: each command is a thin function over library calls."""
