"""Exceptions for problems a user can fix (bad files, bad recipe keys, missing wavelength)."""


class InsituXRDError(Exception):
    """A problem with the user's input: the message names the file or key and what is wrong.

    The CLI prints the message on one line and exits with status 2 instead of a traceback.
    """


class RecipeError(InsituXRDError):
    """A recipe key or value is invalid."""


class FrameError(InsituXRDError):
    """A detector frame cannot be read or has the wrong shape."""
