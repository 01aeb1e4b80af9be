"""Retention: `playledger purge --older-than 90d` turns an age into a whole-day cutoff."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playledger.errors import UsageError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_age(text: str) -> timedelta:
    match = _AGE.match(text)
    if not match:
        raise UsageError(
            f"--older-than {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 90d"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def purge_cutoff(age: timedelta, now: datetime) -> datetime:
    """`now - age`, rounded down to midnight UTC: what is purged is whole days (PostgreSQL
    drops whole day partitions), so a run is kept at least `age` and at most a day longer."""
    moment = (now - age).astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
