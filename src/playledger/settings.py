"""One table of settings: name, type, default, environment variable, help.

Every setting is declared once here and read once into a `Settings` object. The CLI help, the
docs (docs/settings.md) and a test that fails when a setting is undocumented all come from this
table. Nothing else in the code reads `os.environ` for configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

from playledger.errors import SettingError

FSYNC_POLICIES = ("always", "interval", "never")


def _data_dir() -> Path:
    return Path(platformdirs.user_data_dir("playledger", appauthor=False))


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _positive_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _choice(*choices: str) -> Callable[[str], str]:
    def cast(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return cast


def _port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be a TCP port (1-65535)")
    return number


NATS_SCHEMES = ("nats://", "tls://")


def _sink_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://", *NATS_SCHEMES)):
        raise ValueError(
            "must be empty (store directly), an http:// or https:// URL, "
            "or nats:// (tls://) server URLs"
        )
    return value.rstrip("/")


def _nats_url(value: str) -> str:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls or not all(u.startswith(NATS_SCHEMES) for u in urls):
        raise ValueError("must be nats:// (or tls://) URLs, comma-separated for a cluster")
    return ",".join(urls)


def _nats_name(value: str) -> str:
    """A stream or consumer name: no dots, wildcards or spaces (JetStream's own rule)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("must be 1-64 letters, digits, '_' or '-'")
    return value


def _subject_prefix(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
        raise ValueError("must be dot-separated tokens of letters, digits, '_' or '-'")
    return value


def _above_zero(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be > 0")
    return number


def _port_or_off(value: str) -> int:
    return 0 if value.strip() == "0" else _port(value)


def _regex(value: str) -> str:
    if value:
        re.compile(value)
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    cast: Callable[[str], Any]
    default: Callable[[], str]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "db",
        "PLAYLEDGER_DB",
        str,
        lambda: str(_data_dir() / "playledger.db"),
        "Store to record into: a SQLite file path (the embedded default) or a "
        "postgresql://user@host:port/dbname URL (run 'playledger db upgrade' first).",
    ),
    Setting(
        "spool_dir",
        "PLAYLEDGER_SPOOL_DIR",
        _path,
        lambda: str(_data_dir() / "spool"),
        "Folder for per-run spool files written by the callback and drained by the shipper.",
    ),
    Setting(
        "fsync",
        "PLAYLEDGER_FSYNC",
        _choice(*FSYNC_POLICIES),
        lambda: "interval",
        "Spool fsync policy: 'always' (every event), 'interval' (at most fsync_interval "
        "seconds of events at risk on power loss) or 'never' (leave it to the OS).",
    ),
    Setting(
        "fsync_interval",
        "PLAYLEDGER_FSYNC_INTERVAL",
        _positive_float,
        lambda: "0.2",
        "Seconds between spool fsyncs under the 'interval' policy.",
    ),
    Setting(
        "redact",
        "PLAYLEDGER_REDACT",
        _regex,
        lambda: "",
        "Regular expression; every match in every recorded string is replaced by ******** "
        "before the first write to disk. Empty: no redaction beyond no_log censoring.",
    ),
    Setting(
        "ship",
        "PLAYLEDGER_SHIP",
        _choice("auto", "off"),
        lambda: "auto",
        "Callback: 'auto' starts a shipper process that drains the spool while the run goes on; "
        "'off' leaves it to 'playledger run' (which sets this) or 'playledger ship'.",
    ),
    Setting(
        "run_id",
        "PLAYLEDGER_RUN_ID",
        str,
        lambda: "",
        "Callback: the run uuid to record under; set per run by 'playledger run', "
        "a new uuid when empty. Do not export it for more than one run.",
    ),
    Setting(
        "batch_size",
        "PLAYLEDGER_BATCH_SIZE",
        _positive_int,
        lambda: "10000",
        "Events per store transaction when shipping (larger batches amortise the index pages "
        "each commit rewrites: see docs/benchmarks.md).",
    ),
    Setting(
        "ship_timeout",
        "PLAYLEDGER_SHIP_TIMEOUT",
        _positive_float,
        lambda: "120",
        "Seconds the shipper keeps trying after a run ends before it leaves the rest in the "
        "spool for 'playledger ship'.",
    ),
    Setting(
        "busy_timeout",
        "PLAYLEDGER_BUSY_TIMEOUT",
        _positive_float,
        lambda: "5",
        "Seconds one store write waits for a lock held by another process before the shipper "
        "backs off and retries.",
    ),
    Setting(
        "db_pool_size",
        "PLAYLEDGER_DB_POOL_SIZE",
        _positive_int,
        lambda: "4",
        "PostgreSQL: most connections one process keeps open to the store (a bounded pool; "
        "never a connection per event or request).",
    ),
    # --- server and HTTP sink (docs/server.md) ---
    Setting(
        "sink",
        "PLAYLEDGER_SINK",
        _sink_url,
        lambda: "",
        "Where the shipper delivers: empty = straight into PLAYLEDGER_DB; "
        "http://host:port = a 'playledger serve' (needs PLAYLEDGER_TOKEN with the ingest scope); "
        "nats://host:4222 (comma-separated for a cluster) = a JetStream stream drained into "
        "PostgreSQL by 'playledger worker' (docs/nats.md).",
    ),
    Setting(
        "token",
        "PLAYLEDGER_TOKEN",
        str,
        lambda: "",
        "Bearer token the HTTP sink (and 'playledger run' reading the verify report) sends.",
    ),
    Setting(
        "serve_host",
        "PLAYLEDGER_SERVE_HOST",
        str,
        lambda: "127.0.0.1",
        "Address 'playledger serve' binds; anything but loopback requires PLAYLEDGER_AUTH=on.",
    ),
    Setting(
        "serve_port",
        "PLAYLEDGER_SERVE_PORT",
        _port,
        lambda: "8787",
        "TCP port 'playledger serve' listens on.",
    ),
    Setting(
        "auth",
        "PLAYLEDGER_AUTH",
        _choice("on", "off"),
        lambda: "on",
        "Server: 'on' requires a bearer token (ingest, read or admin scope) on every API call; "
        "'off' is allowed only on a loopback address.",
    ),
    Setting(
        "max_batch_bytes",
        "PLAYLEDGER_MAX_BATCH_BYTES",
        _positive_int,
        lambda: str(32 << 20),
        "Server: largest ingest body (after decompression) in bytes; a larger body is refused "
        "(413) unless it holds one record (the HTTP sink sends an oversized record alone).",
    ),
    Setting(
        "max_batch_records",
        "PLAYLEDGER_MAX_BATCH_RECORDS",
        _positive_int,
        lambda: "10000",
        "Server: most records in one ingest batch (413 beyond; the HTTP sink splits and resends).",
    ),
    Setting(
        "max_event_bytes",
        "PLAYLEDGER_MAX_EVENT_BYTES",
        _positive_int,
        lambda: str(1 << 20),
        "Server: largest encoded event from other producers; an event sealed by the playledger "
        "callback (its hash recomputes) is stored whatever its size.",
    ),
    Setting(
        "ingest_queue",
        "PLAYLEDGER_INGEST_QUEUE",
        _positive_int,
        lambda: "32",
        "Server: ingest batches in flight at once (read, queued or committing); beyond it the "
        "server answers 503 with Retry-After instead of buffering.",
    ),
    Setting(
        "http_timeout",
        "PLAYLEDGER_HTTP_TIMEOUT",
        _positive_float,
        lambda: "60",
        "HTTP sink: seconds one request may take (connect, send, commit, answer).",
    ),
    # --- NATS JetStream transport and workers (docs/nats.md) ---
    Setting(
        "nats_url",
        "PLAYLEDGER_NATS_URL",
        _nats_url,
        lambda: "nats://127.0.0.1:4222",
        "NATS server(s) 'playledger worker' and 'playledger streams' connect to "
        "(comma-separated URLs for a cluster). Shippers use PLAYLEDGER_SINK=nats://...",
    ),
    Setting(
        "nats_stream",
        "PLAYLEDGER_NATS_STREAM",
        _nats_name,
        lambda: "PLAYLEDGER",
        "JetStream stream that carries event batches (created by 'playledger streams init').",
    ),
    Setting(
        "nats_subject",
        "PLAYLEDGER_NATS_SUBJECT",
        _subject_prefix,
        lambda: "playledger",
        "Subject prefix: batches go to <prefix>.events.<run uuid>, refused messages to "
        "<prefix>.dead.<run uuid>, worker requests to <prefix>.control.<op>.",
    ),
    Setting(
        "nats_consumer",
        "PLAYLEDGER_NATS_CONSUMER",
        _nats_name,
        lambda: "playledger-workers",
        "Durable pull consumer shared by every 'playledger worker' (also their queue group).",
    ),
    Setting(
        "nats_timeout",
        "PLAYLEDGER_NATS_TIMEOUT",
        _above_zero,
        lambda: "10",
        "NATS sink: seconds to connect or to wait for JetStream's publish acknowledgement "
        "before the shipper backs off (the records stay in the spool).",
    ),
    Setting(
        "nats_confirm_timeout",
        "PLAYLEDGER_NATS_CONFIRM_TIMEOUT",
        _above_zero,
        lambda: "30",
        "NATS sink: at the end of a run, seconds to wait for the workers to confirm that "
        "PostgreSQL holds every published event before the spool is removed; unconfirmed, "
        "the spool is kept and the shipper retries (a JetStream ack is not an fsync).",
    ),
    Setting(
        "worker_fetch",
        "PLAYLEDGER_WORKER_FETCH",
        _positive_int,
        lambda: "16",
        "Worker: messages (each a shipper batch) pulled per fetch; committed in transactions "
        "of up to PLAYLEDGER_MAX_BATCH_RECORDS records, acknowledged after each commit.",
    ),
    Setting(
        "worker_metrics_host",
        "PLAYLEDGER_WORKER_METRICS_HOST",
        str,
        lambda: "127.0.0.1",
        "Worker: address of its Prometheus metrics endpoint.",
    ),
    Setting(
        "worker_metrics_port",
        "PLAYLEDGER_WORKER_METRICS_PORT",
        _port_or_off,
        lambda: "9465",
        "Worker: TCP port of its Prometheus metrics endpoint (/metrics); 0 turns it off.",
    ),
)


@dataclass(frozen=True)
class Settings:
    db: str
    spool_dir: Path
    fsync: str
    fsync_interval: float
    redact: str
    ship: str
    run_id: str
    batch_size: int
    ship_timeout: float
    busy_timeout: float
    db_pool_size: int
    sink: str
    token: str
    serve_host: str
    serve_port: int
    auth: str
    max_batch_bytes: int
    max_batch_records: int
    max_event_bytes: int
    ingest_queue: int
    http_timeout: float
    nats_url: str
    nats_stream: str
    nats_subject: str
    nats_consumer: str
    nats_timeout: float
    nats_confirm_timeout: float
    worker_fetch: int
    worker_metrics_host: str
    worker_metrics_port: int

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: str | None) -> Settings:
        """Read every setting: explicit override, then environment, then default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            override = overrides.get(setting.name)
            raw = override if override is not None else env.get(setting.env)
            if raw is None or raw == "":
                raw = setting.default()
            try:
                values[setting.name] = setting.cast(raw)
            except (ValueError, re.error) as exc:
                raise SettingError(f"{setting.env}={raw!r}: {exc}") from exc
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


def settings_help() -> str:
    """The settings table as text, for `playledger --help` and docs/settings.md."""
    lines = []
    for setting in SETTINGS:
        lines.append(f"{setting.env} (default: {setting.default()})\n    {setting.help}")
    return "\n".join(lines)
