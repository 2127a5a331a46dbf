"""Exceptions for problems a user can fix (bad files, bad recipe keys, missing wavelength)."""


class InsituXRDError(Exception):
    """A problem with the user's input: the message names the file or key and what is wrong.

    The CLI prints the message on one line and exits with status 2 instead of a traceback. A
    message built from another library's error (YAML, galvani, h5py: often several lines) is
    joined into that one line here, whoever raises it.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and ("\n" in args[0] or "\r" in args[0]):
            args = (" ".join(part.strip() for part in args[0].splitlines() if part.strip()),)
        super().__init__(*args)


class RecipeError(InsituXRDError):
    """A recipe key or value is invalid."""


class FrameError(InsituXRDError):
    """A detector frame cannot be read or has the wrong shape."""
