"""The HTTP sink: the shipper's batches to `playledger serve` (POST /api/v1/ingest).

One keep-alive connection pool, zstd-compressed bodies, a few quick retries with exponential
backoff and jitter (honouring Retry-After) while the server is down or answers 429/5xx, then
StoreBusy so the shipper's own backoff loop takes over and the records wait in the spool.
A batch the server refuses as malformed (400) raises BatchRejected naming the bad records, so
the shipper quarantines those loudly instead of retrying them forever; a batch too large
(413) is split and sent in halves.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import msgspec
import zstandard

from playledger import __version__
from playledger.errors import BatchRejected, RunConflict, RunNotFound, StoreBusy, StoreError
from playledger.events import Event, RunEnd, RunStart, encode_record
from playledger.store.base import IngestResult

log = logging.getLogger("playledger.sink.http")

Record = RunStart | Event | RunEnd
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
COMPRESS_ABOVE = 1024  # bytes; smaller bodies go as they are


def encode_batch(records: Sequence[Record]) -> bytes:
    return b"[" + b",".join(encode_record(r) for r in records) + b"]"


def _detail(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    try:
        body = msgspec.json.decode(response.content)
        return str(body.get("detail", "")), list(body.get("errors") or [])
    except (msgspec.DecodeError, AttributeError):
        return response.text[:500], []


class HttpSink:
    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 60.0,
        retries: int = 2,
        max_batch_bytes: int = 32 << 20,
        max_batch_records: int = 10_000,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": f"playledger/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = client or httpx.Client(
            base_url=self.url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
        )
        self._client.headers.update(headers)
        self._retries = retries
        self._max_bytes = max_batch_bytes
        self._max_records = max_batch_records
        self._sleep = sleep
        self._jitter = jitter
        self._zstd = zstandard.ZstdCompressor(level=3)

    # --- Sink -------------------------------------------------------------------------------

    def ingest(self, records: Sequence[Record]) -> IngestResult:
        if not records:
            return IngestResult(0, 0)
        if len(records) > self._max_records:
            return self._split(records)
        body = encode_batch(records)
        if len(body) > self._max_bytes and len(records) > 1:
            return self._split(records)
        headers = {"Content-Type": "application/json"}
        if len(body) > COMPRESS_ABOVE:
            body = self._zstd.compress(body)
            headers["Content-Encoding"] = "zstd"
        response = self._request("POST", "/api/v1/ingest", content=body, headers=headers)
        if response.status_code == 200:
            data = msgspec.json.decode(response.content)
            return IngestResult(int(data["inserted"]), int(data["duplicates"]))
        detail, errors = _detail(response)
        if response.status_code == 413 and len(records) > 1:
            return self._split(records)
        if response.status_code in (400, 413):
            rejected = {
                int(e["index"]): str(e.get("message", ""))
                for e in errors
                if isinstance(e, dict) and isinstance(e.get("index"), int)
            }
            raise BatchRejected(f"{self.url} refused the batch: {detail}", rejected)
        if response.status_code == 409:
            raise RunConflict(f"{self.url}: {detail}")
        raise StoreError(f"{self.url} answered {response.status_code}: {detail}")

    def mark_aborted(self, run_uuid: str) -> None:
        self._checked("POST", f"/api/v1/runs/{run_uuid}/aborted")

    def close(self) -> None:
        self._client.close()

    # --- beyond the Sink protocol: what `playledger run` asks the server --------------------

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None:
        self._checked(
            "POST",
            f"/api/v1/runs/{run_uuid}/exit-code",
            content=msgspec.json.encode({"exit_code": exit_code}),
            headers={"Content-Type": "application/json"},
        )

    def verify(self, run_uuid: str) -> dict[str, Any]:
        """The server's verify report of a run (with `hosts`)."""
        report: dict[str, Any] = msgspec.json.decode(
            self._checked("GET", f"/api/v1/runs/{run_uuid}/verify").content
        )
        return report

    # --- internals ----------------------------------------------------------------------------

    def _split(self, records: Sequence[Record]) -> IngestResult:
        half = max(1, min(len(records) // 2, self._max_records))
        results = []
        for start in range(0, len(records), half):
            part = records[start : start + half]
            try:
                results.append(self.ingest(part))
            except BatchRejected as exc:
                # Indexes are relative to the part sent; the shipper needs them in the whole.
                named = exc.rejected or dict.fromkeys(range(len(part)), str(exc))
                shifted = {start + i: reason for i, reason in named.items()}
                raise BatchRejected(str(exc), shifted) from exc
        return IngestResult(sum(r.inserted for r in results), sum(r.duplicates for r in results))

    def _checked(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 400:
            detail, _ = _detail(response)
            if response.status_code == 404:
                raise RunNotFound(f"{self.url}: {detail}")
            raise StoreError(f"{self.url}{path} answered {response.status_code}: {detail}")
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send, retrying connection errors, 429 and 5xx; then StoreBusy (the shipper backs off
        and calls again, the records stay in the spool)."""
        problem = ""
        for attempt in range(self._retries + 1):
            retry_after: float | None = None
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code in (401, 403):
                    detail, _ = _detail(response)
                    raise StoreError(
                        f"{self.url} refused the token ({response.status_code}): {detail}; "
                        "set PLAYLEDGER_TOKEN to a token with the ingest scope"
                    )
                if response.status_code not in RETRY_STATUSES:
                    return response
                detail, _ = _detail(response)
                problem = f"{self.url} answered {response.status_code}: {detail}"
                header = response.headers.get("retry-after", "")
                retry_after = float(header) if header.replace(".", "", 1).isdigit() else None
            if attempt == self._retries:
                break
            base = retry_after if retry_after is not None else 0.1 * 2**attempt
            delay = min(base, MAX_RETRY_AFTER) * (1 + 0.5 * self._jitter())
            log.debug("%s; retrying in %.2fs", problem, delay)
            self._sleep(delay)
        raise StoreBusy(problem)
