"""The one exception type for mistakes a user can fix (bad config, missing file, bad data)."""


class UserError(Exception):
    """A one-line message that says what is wrong and what to do.

    Entry scripts print it without a traceback and exit non-zero; anything else is a bug
    and keeps its traceback.
    """
