"""The error type of bad user input (its own module so that any layer can raise it)."""


class UserInputError(ValueError):
    """Bad input from the command line or a config; the message says what and how to fix it."""
