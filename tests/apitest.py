"""Helpers for the API tests: the app in process (httpx.ASGITransport driven from a portal
thread, lifespan included), a store of each backend, tokens of each scope.

Its fixtures (`api_store`, `api`) are loaded for every test module by conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI

from pgtest import fresh_schema
from playledger.api.app import create_app
from playledger.api.settings import ApiSettings
from playledger.events import Event, RunEnd, RunStart
from playledger.sinks.http import encode_batch
from playledger.store import Store, open_store
from playledger.tokens import create_token


class PortalTransport(httpx.BaseTransport):
    """A synchronous transport into an ASGI app running on an anyio portal's event loop."""

    def __init__(self, app: FastAPI, portal: anyio.from_thread.BlockingPortal) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._inner.handle_async_request(inner)
            content = await response.aread()
            return response.status_code, response.headers.raw, content

        status, headers, content = self._portal.call(send)
        return httpx.Response(status, headers=headers, content=content)


@contextmanager
def in_process(app: FastAPI) -> Iterator[httpx.Client]:
    """A client for `app` with its lifespan running (writer threads started and stopped)."""
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
        httpx.Client(transport=PortalTransport(app, portal), base_url="http://testserver") as c,
    ):
        yield c


@pytest.fixture(params=["sqlite", "postgres"])
def api_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every API test runs on each backend: a SQLite file, or a fresh PostgreSQL schema on the
    machine's server (tests/pgtest.py: fails in CI, skips locally when it is down)."""
    if request.param == "sqlite":
        store = open_store(str(tmp_path / "api.db"))
        yield store
        store.close()
        return
    with fresh_schema() as url:
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


@dataclass
class Api:
    client: httpx.Client
    store: Store
    app: FastAPI
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    def get(
        self, url: str, scope: str = "read", headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.client.get(url, headers={**self.auth(scope), **(headers or {})}, **kwargs)

    def ingest(
        self, records: Sequence[RunStart | Event | RunEnd], **headers: str
    ) -> httpx.Response:
        return self.post_body(encode_batch(records), **headers)

    def post_body(self, body: bytes, **headers: str) -> httpx.Response:
        return self.client.post(
            "/api/v1/ingest",
            content=body,
            headers={**self.auth("ingest"), "Content-Type": "application/json", **headers},
        )


@contextmanager
def running_api(store: Store, settings: ApiSettings | None = None) -> Iterator[Api]:
    app = create_app(store, settings or ApiSettings())
    tokens = {scope: create_token(store, f"t-{scope}", scope)[0] for scope in SCOPES}
    with in_process(app) as client:
        yield Api(client, store, app, tokens)


SCOPES = ("ingest", "read", "admin")


@pytest.fixture
def api(api_store: Store) -> Iterator[Api]:
    with running_api(api_store) as a:
        yield a
