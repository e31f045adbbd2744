"""The one exception type for a user's mistake."""


class CurateError(Exception):
    """A user error (a bad flag, input or output path), printed as one line without a
    traceback."""
