"""Errors the harness raises on purpose, each with a message a user can act on."""


class UnlearnError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(UnlearnError, ValueError):
    """The configuration asks for something impossible (caught before any training)."""


class DataNotFoundError(UnlearnError, FileNotFoundError):
    """A data set is neither on disk nor downloadable from here."""


class DivergedError(UnlearnError, ArithmeticError):
    """A loss became NaN or infinite; the run is recorded with status `diverged`."""


class UnsupportedTaskError(UnlearnError):
    """A method was asked to run on a task kind it does not apply to."""


class ShapeError(ValueError):
    """A metric function got arrays whose shapes differ from the ones it documents (a programming error in
    the caller, not bad user input: deliberately not an UnlearnError)."""
