"""Errors the harness raises on purpose, each with a message a user can act on."""


class UnlearnError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class BadInputError(UnlearnError):
    """The user asked for something that cannot run: caught before any training; the CLI exits 2 and leaves
    no run folder behind."""


class ConfigError(BadInputError, ValueError):
    """The configuration asks for something impossible (caught before any training)."""


class DataNotFoundError(BadInputError, FileNotFoundError):
    """A data set is neither on disk nor downloadable from here."""


class DivergedError(UnlearnError, ArithmeticError):
    """A loss, weight or output became NaN or infinite. In the method stage the run is recorded with status
    `diverged` and NaN metrics; never reported as bad input."""


class UnsupportedTaskError(BadInputError):
    """A method was asked to run on a task kind it does not apply to."""


class ShapeError(ValueError):
    """A metric function got arrays whose shapes differ from the ones it documents (a programming error in
    the caller, not bad user input: deliberately not an UnlearnError)."""
