"""The one JSON error shape, strict decoding of ingest batches, and the v1 response types.

Every error the API returns is built by `error_response` (tests/test_api.py locks its shape):

    {"detail": "...", "code": "invalid_batch", "status": 400,
     "errors": [{"index": 3, "field": "$.counter", "message": "..."}]}

`detail` is where AWX/DRF clients already look for the message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.responses import Response

from playledger.events import Event, Record, RunEnd, RunStart, event_hash

JSON = "application/json"


class ErrorItem(msgspec.Struct, frozen=True):
    index: int | None  # the record's position in an ingest batch
    field: str | None  # a JSON path inside it, or a query parameter
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    detail: str
    code: str
    status: int
    errors: list[ErrorItem]


MAX_ERROR_ITEMS = 100  # a batch of 10,000 bad records names the first 100 (count in `detail`)


class ApiError(Exception):
    """Raised by handlers; turned into the one error shape by the app's exception handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Sequence[ErrorItem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = list(errors)
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    errors: Sequence[ErrorItem] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    """The one function that builds an error response."""
    body = ErrorBody(message, code, status, list(errors)[:MAX_ERROR_ITEMS])
    return Response(msgspec.json.encode(body), status, headers=headers, media_type=JSON)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(data), status, headers=headers, media_type=JSON)


# --- strict decoding of ingest batches ------------------------------------------------------
# Subclasses that refuse unknown fields: the spool and the shipper keep decoding leniently
# (the on-disk format is unchanged); only what arrives over HTTP is held to the exact schema.


class _StrictRunStart(RunStart, forbid_unknown_fields=True, frozen=True):
    pass


class _StrictEvent(Event, forbid_unknown_fields=True):
    pass


class _StrictRunEnd(RunEnd, forbid_unknown_fields=True, frozen=True):
    pass


_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_record_decoder = msgspec.json.Decoder(_StrictRunStart | _StrictEvent | _StrictRunEnd)
_AT = re.compile(r" - at `(?P<path>[^`]*)`$")


@dataclass(frozen=True)
class Limits:
    max_batch_bytes: int
    max_batch_records: int
    max_event_bytes: int


def _problem(record: Record, size: int, limits: Limits) -> tuple[str, str] | None:
    """(field, message) for a record that is well-typed but not acceptable, else None."""
    if not record.run:
        return "$.run", "run must not be empty"
    if isinstance(record, Event):
        if record.counter < 1:
            return "$.counter", "counter must be >= 1"
        if not bytes(record.event_data).lstrip().startswith(b"{"):
            return "$.event_data", "event_data must be a JSON object"
        if size > limits.max_event_bytes and event_hash(record) != record.hash:
            # A sealed event comes from the playledger callback and is stored whatever its
            # size (a 5 MB stdout is real output); the limit is for other producers.
            return "$", (
                f"event of {size:,} bytes exceeds PLAYLEDGER_MAX_EVENT_BYTES "
                f"({limits.max_event_bytes:,}) and is not sealed by the playledger callback"
            )
    elif isinstance(record, RunEnd) and (record.emitted < 0 or record.append_errors < 0):
        return "$.emitted", "emitted and append_errors must be >= 0"
    return None


def decode_batch(body: bytes, limits: Limits) -> list[Record]:
    """The records of an ingest body, or ApiError naming every bad one; all or nothing."""
    try:
        items = _array_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not a JSON array: {exc}") from exc
    if len(items) > limits.max_batch_records:
        raise ApiError(
            413,
            "batch_too_large",
            f"{len(items):,} records in one batch; at most {limits.max_batch_records:,} "
            "(PLAYLEDGER_MAX_BATCH_RECORDS): split the batch",
        )
    if len(body) > limits.max_batch_bytes and len(items) > 1:
        raise ApiError(
            413,
            "batch_too_large",
            f"batch of {len(body):,} bytes; at most {limits.max_batch_bytes:,} "
            "(PLAYLEDGER_MAX_BATCH_BYTES) unless it holds a single record: split the batch",
        )
    records: list[Record] = []
    errors: list[ErrorItem] = []
    for index, raw in enumerate(items):
        try:
            record = _record_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            message = str(exc)
            at = _AT.search(message)
            errors.append(ErrorItem(index, at["path"] if at else "$", message))
            continue
        problem = _problem(record, len(raw), limits)
        if problem is not None:
            errors.append(ErrorItem(index, problem[0], problem[1]))
        records.append(record)
    if errors:
        raise ApiError(
            400,
            "invalid_batch",
            f"{len(errors):,} of {len(items):,} records are invalid (listed by index); "
            "nothing of this batch was stored",
            errors,
        )
    return records


class ExitCode(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    exit_code: int


exit_code_decoder = msgspec.json.Decoder(ExitCode)


# --- v1 response types (also the OpenAPI components) ----------------------------------------


class IngestResponse(msgspec.Struct, frozen=True):
    records: int
    inserted: int
    duplicates: int


class HostCounts(msgspec.Struct, frozen=True):
    """Hosts per outcome, from the run's recap (None until the stats event is stored)."""

    total: int
    ok: int
    changed: int
    failed: int
    unreachable: int


class RunOut(msgspec.Struct, frozen=True):
    id: int
    uuid: str
    playbook: str
    status: str
    started: str
    finished: str | None
    elapsed: float | None
    emitted: int | None
    stored: int
    complete: bool  # final record stored and stored == emitted (the verify report says more)
    lag: int | None  # emitted - stored
    hosts: int
    host_counts: HostCounts | None
    exit_code: int | None
    append_errors: int
    controller: str
    user: str
    cwd: str
    argv: list[str]
    ansible_version: str
    links: dict[str, str]


class RunList(msgspec.Struct, frozen=True):
    count: int
    next: str | None
    results: list[RunOut]


class EventList(msgspec.Struct, frozen=True):
    count: int | None
    next: str | None
    results: list[Event]


class HostSummaryOut(msgspec.Struct, frozen=True):
    host: str
    ok: int
    changed: int
    failures: int
    dark: int
    skipped: int
    rescued: int
    ignored: int
    failed: bool


class HostSummaryList(msgspec.Struct, frozen=True):
    count: int
    results: list[HostSummaryOut]


class HostRunOut(msgspec.Struct, frozen=True):
    source: str  # "recap": the host is in the run's recap; "events": no recap, events only
    summary: HostSummaryOut | None
    run: RunOut


class HostRunList(msgspec.Struct, frozen=True):
    next: str | None
    results: list[HostRunOut]


class TokenOut(msgspec.Struct, frozen=True):
    id: int
    name: str
    scope: str
    prefix: str
    created: str
    revoked: str | None


COMPONENTS: tuple[type, ...] = (
    ErrorBody,
    IngestResponse,
    RunOut,
    RunList,
    EventList,
    HostSummaryList,
    HostRunList,
    TokenOut,
)


def _documented(cls: type[msgspec.Struct], name: str) -> Any:
    """A copy of a record type for JSON Schema: `event_data` (kept verbatim as msgspec.Raw)
    is documented as the JSON object it is."""
    config = cls.__struct_config__
    fields: list[Any] = []
    for f in msgspec.structs.fields(cls):
        typ = dict[str, Any] if f.type is msgspec.Raw else f.type
        if f.required:
            fields.append((f.name, typ))
        else:
            fields.append((f.name, typ, {} if f.type is msgspec.Raw else f.default))
    return msgspec.defstruct(name, fields, tag=config.tag, tag_field=config.tag_field)


def openapi_components() -> dict[str, Any]:
    """JSON Schemas of the request and response types, for the OpenAPI document."""
    event = _documented(Event, "Event")
    event_list = msgspec.defstruct(
        "EventList",
        [("count", int | None), ("next", str | None), ("results", list[event])],  # type: ignore[valid-type]
    )
    types = [t for t in COMPONENTS if t is not EventList]
    _, components = msgspec.json.schema_components(
        [*types, event_list, list[RunStart | event | RunEnd]],  # type: ignore[valid-type]
        ref_template="#/components/schemas/{name}",
    )
    return components


def ref(name: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry pointing at one of the components."""
    return {"content": {JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
