"""Errors a user can fix: the CLI prints them as one line on stderr and exits 2 (no traceback)."""


class ConfigError(ValueError):
    """A config that cannot be used: names the file, each bad key's dotted path, its value and the reason."""


class InputError(ValueError):
    """Input a user can fix (a corpus a request may not use, a missing piece): one line on stderr, exit 2."""
