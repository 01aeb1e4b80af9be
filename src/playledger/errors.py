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


class ResendNeeded(StoreBusy):
    """The next hop acknowledged records that never reached its store, and none is still on
    its way (a broker lost acknowledged messages: a crash before its file store synced, or
    they expired). The shipper sends the spool again from the start; the store takes it
    idempotently."""


class RunConflict(PlayledgerError):
    """A record collides with a *different* record already stored under the same run and
    counter (a reused run id). Never counted as a duplicate, never retried: the spool is kept
    and the conflict reported, so neither run's events are lost."""


class BatchRejected(PlayledgerError):
    """The next hop refused records as malformed, for good: retrying cannot help.

    Deliberately not a StoreError (which means "retry later"): the shipper quarantines the
    rejected records loudly instead of retrying them forever. `rejected` maps the index of
    each refused record in the batch to the reason; empty means the whole batch.
    """

    def __init__(self, message: str, rejected: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected or {}


class TokenNotFound(UsageError):
    pass
