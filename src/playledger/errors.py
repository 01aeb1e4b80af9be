"""The library's own exceptions; the CLI turns each into a one-line message and an exit code."""


class PlayledgerError(Exception):
    """Base class: a failure the user can act on, with a one-line message."""

    exit_code = 1


class UsageError(PlayledgerError):
    """Bad input from the user (unknown run, bad setting value)."""

    exit_code = 2


class RunNotFound(UsageError):
    pass


class SettingError(UsageError):
    pass


class SpoolError(PlayledgerError):
    """The spool cannot be written or read."""


class CorruptRecord(SpoolError):
    """A spool record failed its checksum or framing; it is quarantined, never dropped silently."""


class StoreError(PlayledgerError):
    """The store cannot be opened or written."""


class StoreBusy(StoreError):
    """The store is locked or unavailable for now; the caller retries with backoff."""
