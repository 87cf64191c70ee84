"""The command line's own error type (a module of its own, so the commands and ``cli.main`` share it without
importing each other)."""


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""
