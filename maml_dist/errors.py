"""Errors the entry points report in one line (their own module, so any layer can raise them)."""


class UserInputError(ValueError):
    """Bad input from the command line or a config; the message says what and how to fix it."""


class RunStoppedError(RuntimeError):
    """The run stopped on purpose; the message says where, and what to do next.

    The entry points exit with status 1 (bad input exits with 2).
    """
