"""The server's typed configuration, derived from the one settings table (no second table)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from playledger.errors import UsageError
from playledger.settings import Settings
from playledger.spool import MAX_RECORD


@dataclass(frozen=True)
class ApiSettings:
    auth: bool = True
    max_batch_bytes: int = 32 << 20
    max_batch_records: int = 10_000
    max_event_bytes: int = 1 << 20
    ingest_queue: int = 32
    stream_poll: float = 0.5  # seconds between store polls of a live event stream
    stream_idle_end: float = 60.0  # a finished run's stream ends after this long without news
    # Not a setting: the spool's own ceiling for one record (plus framing). A body that large
    # is accepted only as a single record; tests lower it to exercise the refusal.
    max_record_bytes: int = MAX_RECORD + (1 << 20)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiSettings:
        return cls(
            auth=settings.auth == "on",
            max_batch_bytes=settings.max_batch_bytes,
            max_batch_records=settings.max_batch_records,
            max_event_bytes=settings.max_event_bytes,
            ingest_queue=settings.ingest_queue,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, auth: bool) -> None:
    """Refuse to expose an unauthenticated API beyond this machine."""
    if not auth and not is_loopback(host):
        raise UsageError(
            f"refusing to bind {host} with PLAYLEDGER_AUTH=off: without tokens anyone who can "
            "reach the port could read every run and write events; bind 127.0.0.1 or turn "
            "auth on (playledger token create)"
        )
