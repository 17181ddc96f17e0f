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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): GDAL's and
    OGR's reasons, quoted inside geodet's one-sentence errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
