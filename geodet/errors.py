"""The one exception type for bad user input."""


class GeodetError(ValueError):
    """Bad input that the user can fix; its message is one clear sentence.

    The CLI prints the message without a traceback.
    """
