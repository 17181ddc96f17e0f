"""The exception types for bad user input."""


class GeodetError(ValueError):
    """Bad input that the user can fix; its message is one clear sentence.

    The CLI prints the message without a traceback.
    """


class ConfigError(GeodetError, ValueError):
    """A setting out of range or unknown (a config dataclass, a ``--config`` file).

    A :class:`GeodetError` (so the CLI prints it as one sentence) and a
    ``ValueError`` (as config validation always raised).
    """
