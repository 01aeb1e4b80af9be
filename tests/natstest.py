"""The machine's real NATS JetStream for tests: a stream of its own per test (unique stream,
subject prefix and consumer), deleted afterwards; a private nats-server (free loopback port,
own store dir) for tests that restart it; and `playledger worker` processes.

In CI (CI=true) an unreachable server fails the test; on a developer's machine it skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from conftest import PYTHON
from pgtest import in_ci
from playledger.errors import StoreError
from playledger.jetstream import StreamOptions, Subjects, administer, init_stream

NATS_URL = "nats://127.0.0.1:4222"
_down: dict[str, str] = {}  # url -> why it was unreachable (asked once per session)


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_nats(url: str = NATS_URL) -> None:
    """Fail (CI) or skip (local) unless JetStream answers at `url`."""
    if url not in _down:

        async def ask(nc: NATS) -> None:
            await nc.jetstream().account_info()

        try:
            administer(url, 5, ask)
            _down[url] = ""
        except StoreError as exc:
            _down[url] = str(exc)
    if _down[url]:
        _unavailable(f"NATS JetStream at {url} is not reachable: {_down[url]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Names:
    url: str
    stream: str
    subject: str
    consumer: str

    def env(self) -> dict[str, str]:
        return {
            "PLAYLEDGER_NATS_URL": self.url,
            "PLAYLEDGER_NATS_STREAM": self.stream,
            "PLAYLEDGER_NATS_SUBJECT": self.subject,
            "PLAYLEDGER_NATS_CONSUMER": self.consumer,
        }

    def sink_env(self) -> dict[str, str]:
        return {**self.env(), "PLAYLEDGER_SINK": self.url}


def unique_names(url: str = NATS_URL) -> Names:
    tag = uuid.uuid4().hex[:10]
    return Names(url, f"T{tag}", f"t{tag}", f"w{tag}")


def create_stream(names: Names, **options: Any) -> None:
    administer(
        names.url,
        10,
        lambda nc: init_stream(
            nc, names.stream, Subjects(names.subject), names.consumer, StreamOptions(**options)
        ),
    )


def delete_stream(names: Names) -> None:
    async def delete(nc: NATS) -> None:
        await nc.jetstream().delete_stream(names.stream)

    with suppress(Exception):  # cleanup only: the server may be gone with its tmp store
        administer(names.url, 5, delete)


@contextmanager
def fresh_stream(url: str = NATS_URL, **options: Any) -> Iterator[Names]:
    """A stream, subject prefix and consumer of this test's own, deleted afterwards."""
    require_nats(url)
    names = unique_names(url)
    create_stream(names, **options)
    try:
        yield names
    finally:
        delete_stream(names)


def stream_counts(names: Names) -> dict[str, int]:
    """Messages in the stream, per subject (events and dead letters)."""

    async def ask(nc: NATS) -> dict[str, int]:
        info = await nc.jetstream().stream_info(names.stream, subjects_filter=">")
        return dict(info.state.subjects or {})

    return administer(names.url, 10, ask)


def consumer_state(names: Names) -> dict[str, int]:
    async def ask(nc: NATS) -> dict[str, int]:
        c = await nc.jetstream().consumer_info(names.stream, names.consumer)
        return {
            "pending": int(c.num_pending or 0),
            "ack_pending": int(c.num_ack_pending or 0),
            "redelivered": int(c.num_redelivered or 0),
            "ack_floor": int(c.ack_floor.stream_seq if c.ack_floor else 0),
        }

    return administer(names.url, 10, ask)


# --- a private nats-server ---------------------------------------------------------------------


class NatsServer:
    """nats-server -js on a free loopback port with its own store dir; start/stop at will."""

    def __init__(self, store_dir: Path, log: Path) -> None:
        binary = shutil.which("nats-server") or ("/usr/sbin/nats-server")
        if not Path(binary).exists():
            _unavailable("nats-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.store_dir = store_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sd(self) -> str:
        return str(self.store_dir)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-sd",
                    str(self.store_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            _down.pop(self.url, None)
            try:
                administer(self.url, 2, lambda nc: nc.jetstream().account_info())
                return
            except StoreError as exc:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    log = self.log.read_text()
                    raise AssertionError(f"nats-server did not start: {log}") from exc
                time.sleep(0.1)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextmanager
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store", tmp_path / "nats-server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop(signal.SIGKILL)


# --- worker processes --------------------------------------------------------------------------


class WorkerProc:
    """`playledger worker` in its own session, with a metrics port and a log file."""

    def __init__(self, env: dict[str, str], db: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "playledger", "worker", "--db", db, "--metrics-port", str(self.port)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def metrics(self) -> dict[str, float]:
        """Samples of the worker's /metrics (name{labels} -> value); {} when unreachable."""
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "worker consuming stream" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait: its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._out.close()


@contextmanager
def workers(n: int, env: dict[str, str], db: str, logs: Path) -> Iterator[list[WorkerProc]]:
    """n workers, ready; whatever is still running at the end is killed."""
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[WorkerProc] = []
    try:
        for i in range(n):
            procs.append(WorkerProc(env, db, logs / f"worker-{i}.log"))
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.close()
