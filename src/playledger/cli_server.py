"""The server and administration commands: serve, worker, token, db, purge, streams.

Registered on the `playledger` group by importing this module (cli.py does, at its end).
"""

from __future__ import annotations

import click
import msgspec

from playledger.cli import cli, errors, settings_of, store_session
from playledger.errors import UsageError
from playledger.settings import Settings
from playledger.store import open_store


@cli.group()
def db() -> None:
    """The store's schema (PostgreSQL: run `db upgrade` once per new playledger version)."""


@db.command("upgrade")
@click.pass_context
@errors
def db_upgrade(ctx: click.Context) -> None:
    """Apply the store's missing schema migrations (a SQLite store also does it on open)."""
    from playledger.store import upgrade_store

    result = upgrade_store(settings_of(ctx.find_root()).db)
    if result.applied:
        steps = ", ".join(str(v) for v in result.applied)
        click.echo(f"schema upgraded from version {result.before} to {result.after} ({steps})")
    else:
        click.echo(f"schema up to date (version {result.after})")


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="e.g. 90d, 12h, 2w: remove runs recorded before now - AGE, in whole days (UTC).",
)
@click.pass_context
@errors
def purge(ctx: click.Context, older_than: str) -> None:
    """Retention: remove old runs with all their events and host summaries."""
    from datetime import UTC, datetime

    from playledger.retention import parse_age, purge_cutoff

    cutoff = purge_cutoff(parse_age(older_than), datetime.now(UTC))
    with store_session(settings_of(ctx)) as store:
        result = store.purge(cutoff)
    runs = f"{result.runs:,} run{'' if result.runs == 1 else 's'}"
    line = f"purged {runs} ({result.events:,} events) recorded before {cutoff:%Y-%m-%d} UTC"
    if result.partitions:
        line += f"; dropped partitions {', '.join(result.partitions)}"
    click.echo(line)


@cli.command()
@click.option("--host", default=None, help="Address to bind (PLAYLEDGER_SERVE_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (PLAYLEDGER_SERVE_PORT, 8787).")
@click.pass_context
@errors
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """HTTP server: ingest from remote shippers, REST API v1, AWX-compatible routes, metrics."""
    from playledger.api.app import serve as run_server

    settings = settings_of(ctx)
    run_server(settings, host or settings.serve_host, port or settings.serve_port)


@cli.group()
def token() -> None:
    """API tokens for `playledger serve` (only a digest is stored)."""


@token.command("create")
@click.option(
    "--scope", type=click.Choice(["ingest", "read", "admin"]), required=True, help="admin: all."
)
@click.option("--name", required=True, help="A name to recognise it by, e.g. the controller.")
@click.pass_context
@errors
def token_create(ctx: click.Context, scope: str, name: str) -> None:
    """Create a token and print it once: it cannot be shown again."""
    from playledger.tokens import create_token

    with store_session(settings_of(ctx.find_root())) as store:
        secret, row = create_token(store, name, scope)
    click.echo(secret)
    click.echo(f"token {row.id} {row.name!r} (scope {row.scope}) created; store it now", err=True)


@token.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include revoked tokens.")
@click.pass_context
@errors
def token_list(ctx: click.Context, show_all: bool) -> None:
    """Tokens: id, name, scope, prefix, created, revoked."""
    with store_session(settings_of(ctx.find_root())) as store:
        rows = [t for t in store.tokens() if show_all or t.revoked is None]
    click.echo(f"{'id':>4}  {'name':<24} {'scope':<7} {'prefix':<11} {'created':<27} revoked")
    for t in rows:
        click.echo(
            f"{t.id:>4}  {t.name:<24} {t.scope:<7} {t.prefix:<11} {t.created:<27} "
            f"{t.revoked or '-'}"
        )


@token.command("revoke")
@click.argument("ref", metavar="ID_OR_NAME")
@click.pass_context
@errors
def token_revoke(ctx: click.Context, ref: str) -> None:
    """Revoke a token by id or name; the server refuses it from the next request on."""
    from playledger.tokens import utc_now

    with store_session(settings_of(ctx.find_root())) as store:
        row = store.revoke_token(ref, utc_now())
    click.echo(f"token {row.id} {row.name!r} revoked")


# --- NATS JetStream: workers and the stream (docs/nats.md) ------------------------------------


@cli.command()
@click.option("--nats", "nats_url", metavar="URL", default=None, help="PLAYLEDGER_NATS_URL.")
@click.option(
    "--db", "db_url", metavar="URL", default=None, help="Store, e.g. postgresql://... (--db)."
)
@click.option(
    "--metrics-port", type=int, default=None, help="PLAYLEDGER_WORKER_METRICS_PORT (0: off)."
)
@click.pass_context
@errors
def worker(
    ctx: click.Context, nats_url: str | None, db_url: str | None, metrics_port: int | None
) -> None:
    """Commit the JetStream stream's batches into the store; run as many as needed (they
    share one durable consumer). SIGTERM: commit and ack what is in hand, then exit 0."""
    from playledger.worker import WorkerConfig, run_worker

    base = settings_of(ctx)
    settings = Settings.load(
        db=db_url or base.db,
        nats_url=nats_url,
        worker_metrics_port=None if metrics_port is None else str(metrics_port),
    )
    config = WorkerConfig(
        nats_url=settings.nats_url,
        stream=settings.nats_stream,
        subject=settings.nats_subject,
        consumer=settings.nats_consumer,
        fetch=settings.worker_fetch,
        commit_records=settings.max_batch_records,
        max_event_bytes=settings.max_event_bytes,
        connect_timeout=settings.nats_timeout,
    )
    store = open_store(settings.db, settings.busy_timeout, settings.db_pool_size)
    try:
        totals = run_worker(
            config, store, settings.worker_metrics_host, settings.worker_metrics_port
        )
    finally:
        store.close()
    click.echo(
        f"worker: {totals['messages_consumed']:,} messages consumed "
        f"({totals['messages_redelivered']:,} redelivered), "
        f"{totals['events_committed']:,} events committed",
        err=True,
    )


@cli.group()
def streams() -> None:
    """The JetStream stream and durable consumer of the NATS transport."""


@streams.command("init")
@click.option("--nats", "nats_url", metavar="URL", default=None, help="PLAYLEDGER_NATS_URL.")
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Copies of each message in a NATS cluster; use 3 there (an ack = on 3 servers).",
)
@click.option(
    "--retention",
    type=click.Choice(["workqueue", "limits"]),
    default="workqueue",
    show_default=True,
    help="workqueue: a batch is deleted once a worker committed it; limits: kept until "
    "--max-age (replayable).",
)
@click.option("--max-age", default="7d", show_default=True, help="Batches older expire.")
@click.option(
    "--max-bytes", type=int, default=-1, show_default=True, help="Stream size cap (-1: none)."
)
@click.option("--duplicate-window", default="10m", show_default=True, help="De-dup window.")
@click.option("--ack-wait", default="30s", show_default=True, help="Redeliver after this.")
@click.option("--max-ack-pending", type=int, default=1024, show_default=True)
@click.pass_context
@errors
def streams_init(
    ctx: click.Context,
    nats_url: str | None,
    replicas: int,
    retention: str,
    max_age: str,
    max_bytes: int,
    duplicate_window: str,
    ack_wait: str,
    max_ack_pending: int,
) -> None:
    """Create or update the stream and consumer (idempotent: run it on every deploy)."""
    from playledger.jetstream import StreamOptions, Subjects, administer, init_stream
    from playledger.jetstream import parse_duration as secs

    settings = Settings.load(db=settings_of(ctx.find_root()).db, nats_url=nats_url)
    options = StreamOptions(
        replicas=replicas,
        retention=retention,
        max_age=secs("--max-age", max_age),
        max_bytes=max_bytes,
        duplicate_window=secs("--duplicate-window", duplicate_window),
        ack_wait=secs("--ack-wait", ack_wait),
        max_ack_pending=max_ack_pending,
    )
    lines = administer(
        settings.nats_url,
        settings.nats_timeout,
        lambda nc: init_stream(
            nc,
            settings.nats_stream,
            Subjects(settings.nats_subject),
            settings.nats_consumer,
            options,
        ),
    )
    click.echo("\n".join(lines))


@streams.command("status")
@click.option("--nats", "nats_url", metavar="URL", default=None, help="PLAYLEDGER_NATS_URL.")
@click.pass_context
@errors
def streams_status(ctx: click.Context, nats_url: str | None) -> None:
    """Messages in the stream; pending, unacknowledged and redelivered in the consumer."""
    from playledger.jetstream import administer, stream_status

    settings = Settings.load(db=settings_of(ctx.find_root()).db, nats_url=nats_url)
    status = administer(
        settings.nats_url,
        settings.nats_timeout,
        lambda nc: stream_status(nc, settings.nats_stream, settings.nats_consumer),
    )
    click.echo(
        f"stream {status['stream']}: {status['messages']:,} messages, {status['bytes']:,} bytes; "
        f"consumer {status['consumer']}: {status['pending']:,} pending, "
        f"{status['ack_pending']:,} unacknowledged, {status['redelivered']:,} redelivered, "
        f"{status['waiting']:,} waiting pulls"
    )


_RUN_HELP = "Only this run's dead letters (its uuid)."


@streams.command("dead")
@click.option("--nats", "nats_url", metavar="URL", default=None, help="PLAYLEDGER_NATS_URL.")
@click.option("--run", "run", metavar="UUID", default=None, help=_RUN_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    metavar="N",
    help="List at most N (the total is still counted).",
)
@click.pass_context
@errors
def streams_dead(
    ctx: click.Context, nats_url: str | None, run: str | None, as_json: bool, limit: int
) -> None:
    """Dead letters: batches the workers could never store, oldest first (read only: nothing
    is consumed; gives up after 60 s). Columns: stream sequence, time (UTC), run, records
    ("-": undecodable), the refused message's Nats-Msg-Id, and the Playledger-Error reason."""
    from playledger.deadletters import list_dead
    from playledger.jetstream import Subjects, administer

    settings = Settings.load(db=settings_of(ctx.find_root()).db, nats_url=nats_url)
    listing = administer(
        settings.nats_url,
        settings.nats_timeout,
        lambda nc: list_dead(nc, settings.nats_stream, Subjects(settings.nats_subject), run, limit),
    )
    for d in listing.letters:
        if as_json:
            click.echo(msgspec.json.encode(d.as_dict()).decode())
        else:
            records = "-" if d.records is None else str(d.records)
            click.echo(f"{d.seq:>8}  {d.time}  {d.run}  {records:>6}  {d.msg_id}  {d.reason}")
    if not as_json:
        shown = "" if len(listing.letters) == listing.total else f", {len(listing.letters)} shown"
        click.echo(f"{listing.total:,} dead letter{'' if listing.total == 1 else 's'}{shown}")


@streams.command("replay")
@click.option("--nats", "nats_url", metavar="URL", default=None, help="PLAYLEDGER_NATS_URL.")
@click.option("--run", "run", metavar="UUID", default=None, help=_RUN_HELP)
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter in the stream.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@errors
def streams_replay(
    ctx: click.Context, nats_url: str | None, run: str | None, replay_all: bool, yes: bool
) -> None:
    """Put dead letters back on their run's events subject (once the cause is fixed: a store
    that refused writes, a full disk), each deleted only after JetStream acknowledged its copy.
    Safe to repeat or interrupt: the copy has a new message id derived from the dead letter,
    the store is idempotent, and a batch refused again becomes a new dead letter."""
    from playledger.deadletters import Replayed, replay_dead
    from playledger.jetstream import Subjects, administer

    if (run is None) == (not replay_all):
        raise UsageError("streams replay: give --run UUID or --all (one of them)")
    what = f"the dead letters of run {run}" if run else "every dead letter"
    if not yes:
        click.confirm(f"replay {what} to the workers?", abort=True)
    settings = Settings.load(db=settings_of(ctx.find_root()).db, nats_url=nats_url)

    def done(r: Replayed) -> None:
        d = r.letter
        records = "?" if d.records is None else f"{d.records:,}"
        again = " (already replayed: JetStream dropped the copy)" if r.duplicate else ""
        click.echo(
            f"dead letter {d.seq} (run {d.run}, {records} records, {d.reason.split(':')[0]}) "
            f"replayed as {r.seq}{again}"
        )

    count = administer(
        settings.nats_url,
        settings.nats_timeout,
        lambda nc: replay_dead(
            nc, settings.nats_stream, Subjects(settings.nats_subject), run, done
        ),
    )
    click.echo(f"{count:,} dead letter{'' if count == 1 else 's'} replayed")
