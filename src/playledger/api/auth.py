"""Bearer tokens: 401 without a valid token, 403 when its scope does not cover the route."""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from playledger import tokens
from playledger.api.schema import ApiError
from playledger.api.state import state
from playledger.store.base import TokenRow

ANONYMOUS = TokenRow(0, "anonymous (PLAYLEDGER_AUTH=off)", "admin", "", "")


def _challenge(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def require(*scopes: str) -> Callable[[Request], object]:
    """A dependency admitting a token whose scope is one of `scopes` (admin: any)."""

    async def check(request: Request) -> TokenRow:
        st = state(request)
        if not st.settings.auth:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if not header:
            raise _challenge("authentication required: send 'Authorization: Bearer <token>'")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _challenge("unsupported authorization: send 'Authorization: Bearer <token>'")
        row = await run_in_threadpool(tokens.lookup, st.store, presented.strip())
        if row is None:
            raise _challenge("invalid or revoked token")
        if not any(tokens.allows(row.scope, s) for s in scopes):
            raise ApiError(
                403,
                "forbidden",
                f"token {row.name!r} has scope {row.scope!r}; this needs {' or '.join(scopes)}",
            )
        return row

    return check
