"""The exceptions that entry scripts print as one line: mistakes a user can fix (bad config, missing file,
bad data), and a distributed run whose peer died or hung."""
import zipfile
import zlib


class UserError(Exception):
    """A one-line message that says what is wrong and what to do.

    Entry scripts print it without a traceback and exit non-zero; anything else is a bug
    and keeps its traceback.
    """


# What numpy raises when it reads a damaged file (empty, truncated) or one that is no array file at all.
DAMAGED_FILE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class PeerFailure(Exception):
    """Under torchrun: a collective operation failed or got no answer within train.dist_timeout_minutes,
    because another process died or hung. Printed as one line; the process exits at once with status 1,
    so that torchrun sees the failure (and, with --max-restarts, restarts the group)."""
