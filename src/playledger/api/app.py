"""The ASGI app: route list, the error handlers (all errors in one shape), lifespan, `serve`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from playledger import __version__
from playledger.api import awx, ingest, ui, v1
from playledger.api.auth import require
from playledger.api.ingest import RETRY_AFTER, Gate
from playledger.api.metrics import TEXT, Metrics
from playledger.api.schema import ApiError, ErrorItem, error_response, json_response, ref
from playledger.api.settings import ApiSettings, check_bind
from playledger.api.state import AppState, state
from playledger.api.writer import Writer
from playledger.errors import (
    PlayledgerError,
    RunConflict,
    RunNotFound,
    StoreBusy,
    StoreError,
    TokenNotFound,
    UsageError,
)
from playledger.settings import Settings
from playledger.store.base import IngestResult, Store

log = logging.getLogger("playledger.api")

DESCRIPTION = """Every event of every Ansible run: ingest, read, verify.

Authenticate with `Authorization: Bearer <token>` (`playledger token create`). Scopes:
`ingest` (POST batches), `read` (everything else), `admin` (all). Errors always have the shape
of `ErrorBody`. AWX-compatible routes live under `/api/v2/` (see docs/server.md)."""

metrics_router = APIRouter(tags=["metrics"], dependencies=[Depends(v1.known_query)])


@metrics_router.get("/metrics", summary="Prometheus metrics")
def prometheus(request: Request, _: object = Depends(require("read"))) -> Response:
    return Response(state(request).metrics.text(), media_type=TEXT)


@metrics_router.get(
    "/api/v2/metrics/", summary="AWX: metrics (Prometheus text; JSON with ?format=json)"
)
def awx_metrics(
    request: Request,
    format: Annotated[str | None, Query(description="txt (default) or json")] = None,
    _: object = Depends(require("read")),
) -> Response:
    accept = request.headers.get("accept", "")
    wants_json = format == "json" or (
        format is None and "application/json" in accept and "text/plain" not in accept
    )
    if format not in (None, "json", "txt"):
        raise ApiError(400, "invalid_parameter", "format must be txt or json")
    m = state(request).metrics
    return json_response(m.as_json()) if wants_json else Response(m.text(), media_type=TEXT)


def _message(exc: Exception) -> str:
    """Library messages end by naming the store (a file path or a database URL, perhaps with
    credentials); an API client gets the message without it."""
    return str(exc).rsplit(" in ", 1)[0]


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.errors, exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        items = [
            ErrorItem(None, ".".join(str(p) for p in e.get("loc", ())[1:]) or None, e["msg"])
            for e in exc.errors()
        ]
        return error_response(400, "invalid_parameter", "invalid request parameters", items)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )

    async def library(request: Request, exc: Exception) -> Response:
        retry = {"Retry-After": RETRY_AFTER}
        if isinstance(exc, RunNotFound | TokenNotFound):
            return error_response(404, "not_found", _message(exc))
        if isinstance(exc, RunConflict):
            state(request).metrics.rejected.labels("conflict").inc()
            return error_response(409, "run_conflict", _message(exc))
        if isinstance(exc, StoreBusy):
            state(request).metrics.throttled.inc()
            log.warning("store busy: %s", exc)
            return error_response(503, "store_busy", "the store is busy; retry", headers=retry)
        if isinstance(exc, StoreError):  # details (which may name the database) only in the log
            log.error("store unavailable: %s", exc)
            message = "the store is unavailable (see the server log); retry"
            return error_response(503, "store_unavailable", message, headers=retry)
        if isinstance(exc, UsageError):
            return error_response(400, "invalid_request", _message(exc))
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(500, "internal_error", _message(exc))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal error (see the server log)")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(PlayledgerError, library)
    app.add_exception_handler(Exception, unexpected)


def create_app(store: Store, settings: ApiSettings) -> FastAPI:
    """The app over `store` (opened and closed by the caller)."""
    gate = Gate(settings.ingest_queue)
    metrics = Metrics(store, lambda: gate.depth, settings.ingest_queue)

    def counted(result: IngestResult) -> None:
        metrics.ingested.inc(result.inserted)
        metrics.duplicates.inc(result.duplicates)

    writer = Writer(store, max(1, store.pool_stats().size), metrics.commit_seconds.observe, counted)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            await run_in_threadpool(writer.stop)

    app = FastAPI(
        title="playledger",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.playledger = AppState(store, settings, metrics, gate, writer)
    for router in (ingest.router, v1.router, awx.router, metrics_router):
        app.include_router(router)
    _install_error_handlers(app)
    ui.install(app)  # the web UI: HTML pages under /ui/ (after the handlers: its own login one)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from playledger.api.schema import openapi_components

            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = doc.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            # Bad parameters are answered 400 in the one error shape, not FastAPI's 422.
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            for operations in doc.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None and "400" not in responses:
                        responses["400"] = {"description": "Bad Request", **ref("ErrorBody")}
            schemas.update(openapi_components())
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            doc["security"] = [{"bearer": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """`playledger serve`: run the API over the configured store until interrupted."""
    import uvicorn

    from playledger.store import open_store

    api_settings = ApiSettings.from_settings(settings)
    check_bind(host, api_settings.auth)
    store = open_store(settings.db, settings.busy_timeout, settings.db_pool_size)
    try:
        if api_settings.auth and not any(t.revoked is None for t in store.tokens()):
            log.warning(
                "auth is on and no token exists: create one with "
                "`playledger token create --scope admin --name me`"
            )
        app = create_app(store, api_settings)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            lifespan="on",
            timeout_graceful_shutdown=30,
            server_header=False,
        )
        log.info("serving %s on http://%s:%d (auth %s)", settings.db, host, port, settings.auth)
        uvicorn.Server(config).run()
    finally:
        store.close()
