"""The two kinds of failure the CLI turns into exit codes.

UsageError: the user asked for something wrong (bad flag, missing file, unknown name) -> exit 2.
WorkError: the work itself failed (corrupt data, non-finite loss, failed save) -> exit 1.
Both carry one line that names the problem and the fix; the CLI prints it without a traceback.
"""


class ResnetCifarError(Exception):
    exit_code = 1


class UsageError(ResnetCifarError):
    exit_code = 2


class WorkError(ResnetCifarError):
    exit_code = 1


class DataError(WorkError):
    """A dataset file is missing, corrupt or not what it claims to be."""


class CheckpointError(WorkError):
    """A checkpoint cannot be loaded safely or does not fit what is asked of it."""


class Interrupted(ResnetCifarError):
    """SIGINT/SIGTERM/SIGHUP arrived; a checkpoint was written before this was raised (exit 128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


def first_line(e: BaseException, limit: int | None = None, empty: str = "") -> str:
    """The first line of an exception's message, at most `limit` characters; `empty` when it has none.

    How an exception from torch, yaml, zipfile, ... is quoted inside a one-line error.
    """
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else empty


def describe(e: BaseException, limit: int | None = None) -> str:
    """`TypeName: first line of the message`, or the type name alone when there is no message."""
    text = first_line(e, limit)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
