"""Errors that mean the user must change something: the CLI prints them in one line, exit code 2."""


class UsageError(Exception):
    """Bad input from the user (arguments, files, data); the message says what to fix."""
