"""Errors every layer raises and the launcher turns into one line and an exit code."""


class ConfigError(ValueError):
    """An experiment config that cannot run; the message is one line naming the key."""
