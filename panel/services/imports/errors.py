"""The one exception every import step raises for a file that cannot be imported as a whole."""


class ImportFailed(Exception):
    """The file or request as a whole cannot be imported; nothing was. The message says what was
    wrong, where, and what to do, in plain words (no trailing full stop: callers add context)."""
