"""End to end: a real `playledger run` shipping over HTTP to a real `playledger serve` on
PostgreSQL, whose database becomes unreachable for 10 s mid-run -> the run still ends complete.

The machine's PostgreSQL is shared, so it is never stopped: the server reaches it through a
loopback TCP proxy owned by the test. Stopping the proxy closes its listener (new connections are
refused) and every forwarded connection (the server's pool loses all of them at once) — what a
PostgreSQL restart looks like from the server's side.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import PYTHON, Env
from pgtest import PG_URL, fresh_schema
from test_api_e2e import SLOW_PLAYBOOK, Server, client_env, free_port, wait_for

PG_ADDRESS = ("127.0.0.1", 5432)


class TcpProxy:
    """Forwards 127.0.0.1:port to `target`; stop() drops everything, start() listens again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.accepted = 0  # connections forwarded so far
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        self._spawn(self._accept, listener)

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
            threads, self._threads = self._threads, []
        for s in ([listener] if listener else []) + conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
        for t in threads:
            t.join(timeout=5)
        for s in ([listener] if listener else []) + conns:
            s.close()

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
                self.accepted += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):  # one side ended: end the other (closed in stop())
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.mark.slow
def test_postgres_unreachable_for_10s_mid_run(env: Env, tmp_path: Path) -> None:
    proxy = TcpProxy(PG_ADDRESS)
    run: subprocess.Popen[bytes] | None = None
    srv: Server | None = None
    with fresh_schema() as url:
        assert url.startswith(PG_URL)
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}", 1)
        proxy.start()
        try:
            srv = Server(env, proxied, {"PLAYLEDGER_DB_POOL_SIZE": "2"})
            srv.start()
            server = srv
            controller = client_env(env, server, tmp_path, server.token("ingest", "ctl-pg"))
            controller.inventory([f"node-{i}" for i in range(4)])
            controller.write("slow.yml", SLOW_PLAYBOOK)
            out = tmp_path / "run.out"
            with out.open("w") as sink:
                run = subprocess.Popen(
                    [PYTHON, "-m", "playledger", "run", "slow.yml", "-i", "hosts.ini", "-f", "4"],
                    env=controller.vars,
                    cwd=controller.root,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            wait_for(
                lambda: (
                    server.get("/api/v1/runs?page_size=1")["results"]
                    and server.get("/api/v1/runs/latest")["stored"] > 0
                ),
                120,
                "the first events on the server",
            )
            assert run.poll() is None, "the run ended before PostgreSQL could be cut off"
            stored_before = server.get("/api/v1/runs/latest")["stored"]

            proxy.stop()  # PostgreSQL gone: every connection dropped, new ones refused
            outage_started = time.monotonic()
            time.sleep(3)
            # the server really lost its database: a read needing it fails
            with pytest.raises((httpx.HTTPStatusError, httpx.TransportError)):
                server.get("/api/v1/runs/latest")
            assert run.poll() is None, "the run ended during the outage: it was too short"
            time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))
            accepted_before = proxy.accepted
            proxy.start()  # PostgreSQL back

            rc = run.wait(240)
            text = out.read_text()
            assert rc == 0, text
            assert "complete, chain ok" in text.strip().splitlines()[-1], text
            assert proxy.accepted > accepted_before, "the server never reconnected"
            # the outage was met by the shipping itself, not only by the read above
            assert '"POST /api/v1/ingest HTTP/1.1" 503' in server.log.read_text()
            final = server.get("/api/v1/runs/latest")
            assert final["complete"] and final["stored"] == final["emitted"] > stored_before
            report = server.get(f"/api/v1/runs/{final['id']}/verify")
            assert report["complete"] and report["missing"] == [] and report["chain_ok"]
            assert not list(controller.spool_dir.glob("*.spool")), "the spool was not drained"
        finally:
            if run is not None and run.poll() is None:
                run.kill()
                run.wait(10)
            if srv is not None:
                srv.stop()
            proxy.stop()
