"""The exceptions that entry scripts print as one line: mistakes a user can fix (bad config, missing file,
bad data), and a distributed run whose peer died or hung."""


class UserError(Exception):
    """A one-line message that says what is wrong and what to do.

    Entry scripts print it without a traceback and exit non-zero; anything else is a bug
    and keeps its traceback.
    """


class PeerFailure(Exception):
    """Under torchrun: a collective operation failed or got no answer within train.dist_timeout_minutes,
    because another process died or hung. Printed as one line; the process exits at once with status 1,
    so that torchrun sees the failure (and, with --max-restarts, restarts the group)."""
