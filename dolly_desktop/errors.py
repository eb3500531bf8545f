"""One exception type for anything a person can fix: its message is shown as is."""


class DollyError(Exception):
    """Bad input or an unusable model: a one-sentence message, no traceback needed."""
