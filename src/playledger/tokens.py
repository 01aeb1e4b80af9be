"""API tokens: generated once, shown once, stored only as a digest.

Tokens are 32 random bytes, so a plain sha256 is a sufficient digest (nothing to brute-force,
unlike a password) and lets the server find a token by an indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from playledger.errors import UsageError
from playledger.store.base import TOKEN_SCOPES, Store, TokenRow

PREFIX = "plt_"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(granted: str, needed: str) -> bool:
    """admin implies every scope; otherwise the scope must match."""
    return granted == "admin" or granted == needed


def create_token(
    store: Store,
    name: str,
    scope: str,
    now: Callable[[], str] = utc_now,
    randbytes: Callable[[int], str] = secrets.token_urlsafe,
) -> tuple[str, TokenRow]:
    """Create a token; returns (the token, shown once and never stored, its row)."""
    if scope not in TOKEN_SCOPES:
        raise UsageError(f"unknown scope {scope!r}: use one of {', '.join(TOKEN_SCOPES)}")
    if not name.strip():
        raise UsageError("a token needs a name (--name)")
    token = PREFIX + randbytes(32)
    row = store.add_token(name, scope, digest(token), token[: len(PREFIX) + 6], now())
    return token, row


def lookup(store: Store, token: str) -> TokenRow | None:
    """The active token row for a presented token, or None."""
    if not token.startswith(PREFIX) or len(token) > 256:
        return None
    return store.token_by_digest(digest(token))
