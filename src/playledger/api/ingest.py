"""POST /api/v1/ingest: bounded in-flight batches, strict decoding, one writer per connection.

A batch is answered 200 only after the store committed it. The number of batches in flight
(being read, decoded, queued or committing) has a fixed bound; past it the server answers 503
with Retry-After and buffers nothing. Writes go through writer threads that own the store's
write side: SQLite gets exactly one (one connection, one thread, STYLE #5).
"""

from __future__ import annotations

import asyncio
import io
import logging
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import msgspec
import zstandard
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from playledger.api.auth import require
from playledger.api.schema import (
    ApiError,
    IngestResponse,
    Limits,
    decode_batch,
    exit_code_decoder,
    json_response,
    ref,
)
from playledger.api.state import AppState, state
from playledger.api.writer import NotRunning

log = logging.getLogger("playledger.api")
T = TypeVar("T")

RETRY_AFTER = "1"  # seconds; the sink adds jitter
ENCODINGS = ("", "identity", "gzip", "zstd")


class Gate:
    """A fixed bound on batches in flight, plus one slot for an oversized single-record body.

    Used only from the event loop, so plain integers suffice.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.depth = 0
        self.big_in_use = False

    def enter(self) -> bool:
        if self.depth >= self.size:
            return False
        self.depth += 1
        return True

    def leave(self) -> None:
        self.depth -= 1


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "bad_encoding", f"the gzip body cannot be decompressed: {exc}") from exc
    if len(out) > limit:
        raise _TooLarge
    if not d.eof or d.unused_data:
        raise ApiError(400, "bad_encoding", "the gzip body is truncated or has trailing bytes")
    return out


def _unzstd(data: bytes, limit: int) -> bytes:
    out = io.BytesIO()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        with reader:
            while chunk := reader.read(1 << 20):
                out.write(chunk)
                if out.tell() > limit:
                    raise _TooLarge
    except zstandard.ZstdError as exc:
        raise ApiError(400, "bad_encoding", f"the zstd body cannot be decompressed: {exc}") from exc
    return out.getvalue()


class _TooLarge(Exception):
    pass


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "gzip":
        return _gunzip(data, limit)
    if encoding == "zstd":
        return _unzstd(data, limit)
    if len(data) > limit:
        raise _TooLarge
    return data


def _too_large(size: str) -> ApiError:
    return ApiError(413, "body_too_large", f"ingest body larger than {size}")


def _busy(message: str) -> ApiError:
    return ApiError(503, "busy", message, headers={"Retry-After": RETRY_AFTER})


async def _read_body(
    request: Request, limits: Limits, hard_max: int, gate: Gate
) -> tuple[bytes, bool]:
    """The decompressed body and whether it holds the oversized-body slot (caller frees it).

    Up to max_batch_bytes for any batch; beyond, up to one spool record's ceiling, and only
    one such body at a time (it must turn out to be a single record, see decode_batch).
    """
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip or zstd"
        )
    raw = bytearray()
    big = False
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > hard_max:
                raise _too_large(f"{hard_max:,} bytes (one spool record)")
            if len(raw) > limits.max_batch_bytes and not big:
                big = _take_big(gate)
        try:
            body = await run_in_threadpool(
                _decompress, bytes(raw), encoding, limits.max_batch_bytes
            )
        except _TooLarge:
            big = big or _take_big(gate)
            try:
                body = await run_in_threadpool(_decompress, bytes(raw), encoding, hard_max)
            except _TooLarge:
                raise _too_large(f"{hard_max:,} bytes (one spool record)") from None
    except BaseException:
        if big:
            gate.big_in_use = False
        raise
    return body, big


def _take_big(gate: Gate) -> bool:
    if gate.big_in_use:
        raise _busy("another oversized batch is being received; retry")
    gate.big_in_use = True
    return True


router = APIRouter(tags=["ingest"])


@router.post(
    "/api/v1/ingest",
    summary="Store a batch of records (all or nothing)",
    description=(
        "Body: a JSON array of records exactly as the playledger callback writes them "
        "(`kind`: run, event or end), optionally gzip or zstd (Content-Encoding). Answered 200 "
        "only after the store committed the batch; records already stored count as duplicates. "
        "A malformed batch is refused whole (400) naming every bad record by index; 413 when "
        "too large (split it); 503 with Retry-After when the server is at capacity."
    ),
    responses={200: ref("IngestResponse"), 400: ref("ErrorBody"), 413: ref("ErrorBody")},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/RunStart"},
                                {"$ref": "#/components/schemas/Event"},
                                {"$ref": "#/components/schemas/RunEnd"},
                            ]
                        },
                    }
                }
            },
        }
    },
)
async def ingest(request: Request, _: object = Depends(require("ingest"))) -> Response:
    st = state(request)
    s = st.settings
    limits = Limits(s.max_batch_bytes, s.max_batch_records, s.max_event_bytes)
    release = _admit(st)
    try:
        body, big = await _read_body(request, limits, s.max_record_bytes, st.gate)
    except BaseException:
        release()
        raise
    if big:
        release = _also_big(st.gate, release)
    try:
        records = await run_in_threadpool(decode_batch, body, limits)
    except BaseException as exc:
        release()
        if isinstance(exc, ApiError):
            st.metrics.rejected.labels("invalid" if exc.status == 400 else "too_large").inc()
            st.metrics.quarantined.inc(len(exc.errors))
        raise
    del body

    result = await _write(st, lambda: st.writer.submit_ingest(records), release)
    return json_response(IngestResponse(len(records), result.inserted, result.duplicates))


def _admit(st: AppState) -> Callable[[], None]:
    """Take an in-flight slot or answer 503; returns the function that frees it (once)."""
    if not st.gate.enter():
        st.metrics.throttled.inc()
        raise _busy(f"{st.gate.size} ingest batches in flight (PLAYLEDGER_INGEST_QUEUE); retry")
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            st.gate.leave()

    return release


def _also_big(gate: Gate, release: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        gate.big_in_use = False
        release()

    return both


async def _write(st: AppState, submit: Callable[[], Future[T]], release: Callable[[], None]) -> T:
    """Submit a write to the writer threads and wait for it. The in-flight slot is freed when
    the write is over, not when the request is: a client that hangs up must not leave work
    queued behind the bound. (A write not yet started is cancelled with its request.)"""
    loop = asyncio.get_running_loop()
    try:
        future = submit()
    except NotRunning as exc:
        release()
        raise ApiError(503, "not_ready", str(exc), headers={"Retry-After": RETRY_AFTER}) from exc
    except BaseException:
        release()
        raise
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
    return await asyncio.wrap_future(future)


@router.post(
    "/api/v1/runs/{run_uuid}/aborted",
    summary="Mark a run whose writer died without its final record (spool fully drained)",
)
async def mark_aborted(
    request: Request, run_uuid: str, _: object = Depends(require("ingest"))
) -> Response:
    st = state(request)
    await _write(st, lambda: st.writer.submit(lambda: st.store.mark_aborted(run_uuid)), _admit(st))
    return json_response({"run": run_uuid, "ok": True})


@router.post(
    "/api/v1/runs/{run_uuid}/exit-code",
    summary='Record ansible-playbook\'s exit code (body: {"exit_code": N})',
)
async def set_exit_code(
    request: Request, run_uuid: str, _: object = Depends(require("ingest"))
) -> Response:
    st = state(request)
    body = await request.body()
    try:
        code = exit_code_decoder.decode(body).exit_code
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_body", f'expected {{"exit_code": <int>}}: {exc}') from exc
    await run_in_threadpool(st.store.run, run_uuid)  # RunNotFound -> 404
    await _write(
        st, lambda: st.writer.submit(lambda: st.store.set_exit_code(run_uuid, code)), _admit(st)
    )
    return json_response({"run": run_uuid, "exit_code": code})
