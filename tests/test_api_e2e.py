"""End to end with a real `playledger serve` process on loopback: a real `playledger run`
shipping over HTTP; the server killed with SIGKILL mid-run and restarted 10 s later; 20
concurrent shippers; and the Tower-style `curl | jq` checks, run with the real curl and jq."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from conftest import PYTHON, Env
from factories import make_run
from pgtest import fresh_schema
from playledger.events import encode_record
from playledger.spool import SpoolWriter

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m playledger serve` in a child process, its own store, on 127.0.0.1:port."""

    def __init__(self, env: Env, db: Path | str, extra: dict[str, str] | None = None) -> None:
        self.vars = {**env.vars, "PLAYLEDGER_DB": str(db), **(extra or {})}
        self.env = Env(env.root, self.vars)  # token commands act on the server's store
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = env.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = self.token("admin", "e2e-admin")

    def token(self, scope: str, name: str) -> str:
        out = self.env.playledger("token", "create", "--scope", scope, "--name", name, check=True)
        return out.stdout.strip()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "playledger", "serve", "--port", str(self.port)],
                env=self.vars,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._healthy, 30, "the server to answer")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        r = httpx.get(f"{self.url}{path}", headers=headers, timeout=30)
        r.raise_for_status()
        return r.json() if "json" in r.headers["content-type"] else r.text

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(params=["sqlite", "postgres"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The server's store: a SQLite file, or a fresh schema on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "server" / "server.db")
    else:
        with fresh_schema() as url:
            yield url


@pytest.fixture
def server(env: Env, server_db: str) -> Iterator[Server]:
    srv = Server(env, server_db)
    srv.start()
    yield srv
    srv.stop()


def client_env(env: Env, server: Server, tmp_path: Path, token: str) -> Env:
    """A controller: its own spool, a store path that must never be created, the HTTP sink."""
    return Env(
        env.root,
        {
            **env.vars,
            "PLAYLEDGER_DB": str(tmp_path / "client-must-not-exist.db"),
            "PLAYLEDGER_SINK": server.url,
            "PLAYLEDGER_TOKEN": token,
        },
    )


PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      debug: msg="hello {{ inventory_hostname }}"
    - name: items
      command: echo {{ item }}
      loop: [a, b, c]
      changed_when: false
"""


def test_playledger_run_ships_over_http(env: Env, server: Server, tmp_path: Path) -> None:
    ingest_token = server.token("ingest", "controller-1")
    controller = client_env(env, server, tmp_path, ingest_token)
    controller.inventory([f"node-{i}" for i in range(4)])
    controller.write("site.yml", PLAYBOOK)
    proc = controller.playledger("run", "site.yml", "-i", "hosts.ini", "-f", "4", timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert "complete, chain ok" in last and "4 hosts" in last, last
    # The shipper shares Ansible's terminal: no log line per HTTP request in the middle of it.
    assert "HTTP Request" not in proc.stderr, proc.stderr
    assert not (tmp_path / "client-must-not-exist.db").exists()
    run = server.get("/api/v1/runs/latest")
    assert run["complete"] and run["stored"] == run["emitted"] > 0 and run["exit_code"] == 0
    assert server.get(f"/api/v1/runs/{run['id']}/verify")["complete"] is True
    assert not list(controller.spool_dir.glob("*.spool")), "the spool was not drained"

    # The Tower user's verification script, unchanged but for the URL and token.
    if not (shutil.which("curl") and shutil.which("jq")):
        pytest.fail("curl and jq are needed for the Tower-script check")
    auth = f"Authorization: Bearer {server.admin}"
    base = f"{server.url}/api/v2/jobs/{run['id']}"

    def sh(cmd: str) -> str:
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert sh(f'curl -s -H "{auth}" {base}/ | jq -r .status') == "successful"
    count = sh(f'curl -s -H "{auth}" "{base}/job_events/?page_size=1" | jq .count')
    assert int(count) == run["emitted"]
    assert sh(f'curl -s -H "{auth}" {base}/ | jq .event_processing_finished') == "true"
    assert "PLAY RECAP" in sh(f'curl -s -H "{auth}" "{base}/stdout/?format=txt"')


SLOW_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: work for a while
      command: "sleep 0.05"
      loop: "{{ range(0, 40) | list }}"
      changed_when: false
    - name: done
      debug: msg=done
"""


@pytest.mark.slow
def test_server_killed_mid_run_and_restarted_10s_later(
    env: Env, server: Server, tmp_path: Path
) -> None:
    controller = client_env(env, server, tmp_path, server.token("ingest", "controller-k"))
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
    try:
        wait_for(
            lambda: (
                server.get("/api/v1/runs?page_size=1")["results"]
                and server.get("/api/v1/runs/latest")["stored"] > 0
            ),
            120,
            "the first events on the server",
        )
        assert run.poll() is None, "the run ended before the server could be killed"
        stored_before = server.get("/api/v1/runs/latest")["stored"]
        server.kill9()
        time.sleep(10)
        server.start()
        rc = run.wait(240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    text = out.read_text()
    assert rc == 0, text
    assert "complete, chain ok" in text.strip().splitlines()[-1], text
    final = server.get("/api/v1/runs/latest")
    assert final["complete"] and final["stored"] == final["emitted"] > stored_before
    report = server.get(f"/api/v1/runs/{final['id']}/verify")
    assert report["complete"] and report["missing"] == [] and report["chain_ok"]
    # the point of the test: events not yet stored when the server died got there afterwards
    assert final["emitted"] > stored_before


@pytest.mark.slow
def test_twenty_concurrent_shippers(env: Env, server_db: str, tmp_path: Path) -> None:
    srv = Server(
        env,
        server_db,
        {"PLAYLEDGER_INGEST_QUEUE": "4"},  # small, so shippers meet backpressure for real
    )
    srv.start()
    try:
        token = srv.token("ingest", "shippers")
        runs: list[str] = []
        procs: list[subprocess.Popen[bytes]] = []
        for i in range(20):
            spool_dir = tmp_path / f"controller-{i}"
            records = make_run(1500, hosts=10)
            runs.append(records[0].run)
            writer = SpoolWriter(spool_dir / f"{records[0].run}.spool", fsync="never")
            for record in records:
                writer.append(encode_record(record))
            writer.close()
            procs.append(
                subprocess.Popen(
                    [PYTHON, "-m", "playledger", "ship"],
                    env={
                        **env.vars,
                        "PLAYLEDGER_SPOOL_DIR": str(spool_dir),
                        "PLAYLEDGER_DB": str(tmp_path / "nowhere.db"),
                        "PLAYLEDGER_SINK": srv.url,
                        "PLAYLEDGER_TOKEN": token,
                        "PLAYLEDGER_BATCH_SIZE": "300",
                    },
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 20, outputs
        for run in runs:
            report = srv.get(f"/api/v1/runs/{run}/verify")
            assert report["complete"], report
            assert report["stored"] == report["emitted"] == 1500
        metrics = srv.get("/metrics")
        assert "playledger_events_ingested_total 30000.0" in metrics
        assert "playledger_events_dropped_total 0.0" in metrics
        assert not (tmp_path / "nowhere.db").exists()
    finally:
        srv.stop()


def test_serve_refuses_a_public_bind_without_auth(env: Env) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "playledger", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env={**env.vars, "PLAYLEDGER_AUTH": "off"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "refusing to bind 0.0.0.0" in proc.stderr
    assert not Path(env.db).exists()


def test_sigterm_stops_the_server_cleanly(env: Env, server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn finishes in-flight requests and the lifespan (the writer drains), then ends
    # by the signal it was sent, as a shell expects.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log.read_text()
