"""`playledger streams dead` and `streams replay` against the machine's real NATS JetStream,
real `playledger worker` processes and PostgreSQL: dead letters made for real (garbage batches,
a store that refuses writes), listed, and replayed once the cause is fixed. Every wait bounded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nats.aio.client import Client as NATS

from conftest import Env
from factories import make_run
from natstest import Names, free_port, fresh_stream, require_nats, stream_counts, workers
from pgtest import fresh_schema
from playledger.deadletters import replay_id
from playledger.jetstream import Subjects, administer
from playledger.sinks.nats import NatsSink
from playledger.store import open_store
from playledger.verify import verify_run
from test_faults import wait_for

pytestmark = pytest.mark.timeout(300)

# The store refuses every write (as a full disk or a revoked grant would) until it is dropped.
REFUSE = """
CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'no space left (test)'; END $$;
CREATE TRIGGER refuse_writes BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_writes();
"""


def worker_env(env: Env, names: Names) -> dict[str, str]:
    return {**env.vars, **names.env(), "PLAYLEDGER_BUSY_TIMEOUT": "2"}


def dead_count(names: Names) -> int:
    return sum(n for s, n in stream_counts(names).items() if ".dead." in s)


def cli(env: Env, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return env.playledger("streams", *args, timeout=120, input=input)


def dead_json(env: Env, *args: str) -> list[dict[str, Any]]:
    out = cli(env, "dead", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def stored(db: str, run: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events e JOIN runs r ON r.id = e.run_id WHERE r.uuid = %s",
            (run,),
        ).fetchone()
        return int(row[0]) if row else 0


def test_dead_letters_are_listed_without_consuming_them(env: Env, tmp_path: Path) -> None:
    with fresh_stream() as names, fresh_schema() as db:
        env.vars.update(names.env())
        subjects = Subjects(names.subject)
        with workers(1, worker_env(env, names), db, tmp_path / "logs"):

            async def garbage(nc: NATS) -> None:
                js = nc.jetstream()
                await js.publish(
                    subjects.events_of("r1"),
                    b"not json",
                    stream=names.stream,
                    headers={"Nats-Msg-Id": "garbage-1"},
                )
                await js.publish(
                    subjects.events_of("r2"),
                    b'[{"kind": "event"}, {"kind": "event"}]',
                    stream=names.stream,
                )

            administer(names.url, 10, garbage)
            wait_for(lambda: dead_count(names) == 2, 30, "two dead letters")

        out = cli(env, "dead")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[-1] == "2 dead letters"
        assert "r1" in lines[0] and "garbage-1" in lines[0] and "undecodable:" in lines[0]
        assert "r2" in lines[1] and "invalid:" in lines[1]

        letters = dead_json(env)
        assert [(d["run"], d["records"], d["reason"].split(":")[0]) for d in letters] == [
            ("r1", None, "undecodable"),
            ("r2", 2, "invalid"),
        ]
        first, second = letters
        assert first["msg_id"] == "garbage-1" and first["subject"] == subjects.dead_of("r1")
        assert first["seq"] < second["seq"] and first["time"].endswith("Z")
        assert [d["run"] for d in dead_json(env, "--run", "r2")] == ["r2"]
        assert dead_json(env, "--run", "r3") == []
        limited = cli(env, "dead", "--limit", "1")
        assert limited.stdout.splitlines()[-1] == "2 dead letters, 1 shown"
        assert dead_count(names) == 2  # listing consumed nothing


def test_refused_batches_are_replayed_once_the_store_is_fixed(env: Env, tmp_path: Path) -> None:
    with fresh_stream() as names, fresh_schema() as db:
        env.vars.update(names.env())
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(REFUSE)
        records, other = make_run(300), make_run(20)
        run, other_run = records[0].run, other[0].run
        sink = NatsSink(names.url, names.stream, names.subject, names.consumer)
        try:
            with workers(1, worker_env(env, names), db, tmp_path / "logs"):
                for batch in (records[:150], records[150:], other):
                    assert sink.ingest(batch).duplicates == 0  # acked by JetStream
                wait_for(lambda: dead_count(names) == 3, 60, "three store_error dead letters")
                listed = dead_json(env, "--run", run)
                assert [d["records"] for d in listed] == [150, 152]
                assert all(d["reason"].startswith("store_error: ") for d in listed)
                assert all("no space left (test)" in d["reason"] for d in listed)
                assert stored(db, run) == 0

                # Replayed while the store still refuses: dead-lettered again, and that is fine.
                asked = cli(env, "replay", "--all", input="n\n")
                assert asked.returncode == 1 and dead_count(names) == 3  # declined: nothing
                again = cli(env, "replay", "--all", "--yes")
                assert again.returncode == 0, again.stderr
                assert again.stdout.splitlines()[-1] == "3 dead letters replayed"
                old = {d["seq"] for d in listed}

                def refused_again() -> bool:
                    seqs = {d["seq"] for d in dead_json(env)}
                    return len(seqs) == 3 and not seqs & old

                wait_for(refused_again, 60, "the replayed batches dead-lettered again")
                relisted = dead_json(env, "--run", run)
                assert [d["records"] for d in relisted] == [150, 152]
                assert all(d["msg_id"].startswith("replay:") for d in relisted)

                with psycopg.connect(db, autocommit=True) as conn:  # the cause is fixed
                    conn.execute("DROP TRIGGER refuse_writes ON events")
                # A replay that died after the publish ack, before the delete: its copy is
                # in JetStream already (the same replay id), so it is dropped, then deleted.
                _publish_as_replay(names, relisted[0])
                out = cli(env, "replay", "--run", run, "--yes")
                assert out.returncode == 0, out.stderr
                lines = out.stdout.splitlines()
                assert len(lines) == 3 and lines[-1] == "2 dead letters replayed"
                assert "already replayed" in lines[0] and "already" not in lines[1]
                assert all(f"run {run}" in line for line in lines[:2])
                wait_for(lambda: stored(db, run) == 300, 60, "the run's events stored")

                remaining = dead_json(env)
                assert [d["run"] for d in remaining] == [other_run]  # --run left it alone
                done = cli(env, "replay", "--all", "--yes")
                assert done.stdout.splitlines()[-1] == "1 dead letter replayed"
                wait_for(lambda: stored(db, other_run) == 20, 60, "the other run stored")
        finally:
            sink.close()
        assert cli(env, "dead").stdout.splitlines() == ["0 dead letters"]
        store = open_store(db)
        try:
            for r, n in ((run, 300), (other_run, 20)):
                row = store.run(r)
                assert (row.stored, row.emitted) == (n, n)
                assert verify_run(store, row).complete
                assert store.duplicate_uuids(row.id) == 0
        finally:
            store.close()


def _publish_as_replay(names: Names, letter: dict[str, Any]) -> None:
    """What `streams replay` publishes for `letter` (same body, headers and id), unacked by
    any delete: as if the replaying process had died right after the publish ack."""

    async def publish(nc: NATS) -> None:
        js = nc.jetstream()
        msg = await js.get_msg(names.stream, seq=letter["seq"])
        headers = {
            k: v
            for k, v in (msg.headers or {}).items()
            if not k.lower().startswith(("nats-", "playledger-error"))
        }
        headers["Nats-Msg-Id"] = replay_id(letter["seq"], letter["msg_id"])
        target = Subjects(names.subject).events_of(letter["run"])
        await js.publish(target, msg.data or b"", stream=names.stream, headers=headers)

    administer(names.url, 10, publish)


NEEDS = "give --run UUID or --all (one of them)"


def test_replay_needs_run_or_all(env: Env) -> None:
    env.vars["PLAYLEDGER_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"  # never reached
    for args in ((), ("--yes",), ("--run", "x", "--all", "--yes")):
        out = cli(env, "replay", *args)
        assert out.returncode == 2, out
        assert out.stderr.strip() == f"playledger: error: streams replay: {NEEDS}"


def test_unreachable_nats_and_missing_stream_are_one_line_errors(env: Env) -> None:
    env.vars["PLAYLEDGER_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    env.vars["PLAYLEDGER_NATS_TIMEOUT"] = "2"
    out = cli(env, "dead")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "NATS at nats://127.0.0.1:" in out.stderr
    require_nats()
    env.vars.update(PLAYLEDGER_NATS_URL="nats://127.0.0.1:4222", PLAYLEDGER_NATS_STREAM="NOSUCH")
    for args in (("dead",), ("replay", "--all", "--yes")):
        out = cli(env, *args)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines() == [
            "playledger: error: no stream NOSUCH: run `playledger streams init`"
        ]
