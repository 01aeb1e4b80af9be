"""Thin click commands over the library: parse flags, build settings, call, print."""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from playledger import __version__, render
from playledger.callback import plugin_path
from playledger.errors import PlayledgerError, UsageError
from playledger.events import Event
from playledger.settings import Settings, settings_help
from playledger.store import EventFilter, Store, open_store
from playledger.verify import VerifyReport, verify_run

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"playledger: error: {message}", err=True)
    sys.exit(code)


def errors(fn: F) -> F:
    """Library errors become one line on stderr and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PlayledgerError as exc:
            _fail(str(exc), exc.exit_code)

    return wrapper  # type: ignore[return-value]


@contextmanager
def store_session(settings: Settings) -> Iterator[Store]:
    store = open_store(settings.db, settings.busy_timeout, settings.db_pool_size)
    try:
        yield store
    finally:
        store.close()


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group(
    epilog="\b\nSettings (environment variables):\n" + settings_help(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--db", envvar="PLAYLEDGER_DB", help="Store: SQLite file path.", default=None)
@click.version_option(__version__, prog_name="playledger")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """playledger: every event of every Ansible run, kept in order, durably, verifiably.

    RUN arguments take the numeric id, the run uuid, or `latest`.
    """
    logging.basicConfig(level=logging.INFO, format="playledger: %(message)s", stream=sys.stderr)
    # One line per HTTP request would drown the shipper's own messages (and, under
    # `playledger run`, Ansible's output): the HTTP sink logs what matters itself.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        ctx.obj = Settings.load(db=db)
    except PlayledgerError as exc:
        _fail(str(exc), exc.exit_code)


def summary_line(report: VerifyReport, hosts: int) -> str:
    emitted = f"{report.emitted:,}" if report.emitted is not None else "?"
    state = "complete" if report.complete else "INCOMPLETE"
    if report.missing_count:
        state += f" ({report.missing_count:,} missing)"
    elif report.append_errors:
        state += f" ({report.append_errors:,} events failed to reach the spool)"
    elif not report.finished:
        state += " (no final record: the run did not end normally)"
    chain = "chain ok" if report.chain_ok else "chain BROKEN"
    return (
        f"run {report.run_id}: {report.stored:,}/{emitted} events stored, {hosts:,} hosts, "
        f"{state}, {chain}"
    )


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("ansible_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@errors
def run(ctx: click.Context, ansible_args: tuple[str, ...]) -> None:
    """Run ansible-playbook with every event recorded; takes ansible-playbook's arguments.

    Exits with ansible-playbook's exit code; if Ansible succeeded but the record is not
    complete, exits 3.
    """
    from playledger.runner import run_playbook

    if not ansible_args or ansible_args[0] in ("-h", "--help"):
        click.echo(ctx.get_help())
        click.echo("\nExample: playledger run site.yml -i hosts.ini -f 50")
        return
    outcome = run_playbook(ansible_args, settings_of(ctx))
    if outcome.report is None:
        click.echo("playledger: no events were recorded (ansible-playbook stopped early)", err=True)
        sys.exit(outcome.exit_code or 3)
    click.echo(summary_line(outcome.report, outcome.hosts))
    if not outcome.report.complete:
        if outcome.report.spool_pending:
            click.echo(
                f"playledger: {outcome.report.spool_pending:,} records are still in the spool; "
                "run `playledger ship` to finish storing them",
                err=True,
            )
        sys.exit(outcome.exit_code or 3)
    sys.exit(outcome.exit_code)


@cli.command()
@click.option("--limit", default=50, show_default=True, help="How many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@click.pass_context
@errors
def runs(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Table of runs: id, playbook, status, hosts, events stored/emitted, complete?"""
    from rich.console import Console
    from rich.table import Table

    with store_session(settings_of(ctx)) as store:
        rows = store.runs(limit)
        if as_json:
            for r in rows:
                click.echo(msgspec.json.encode(r.__dict__).decode())
            return
        table = Table(box=None)
        for col in ("id", "playbook", "status", "started", "hosts", "events", "complete"):
            right = col in ("id", "hosts", "events")
            table.add_column(col, justify="right" if right else "left", no_wrap=col != "playbook")
        for r in rows:
            emitted = f"{r.emitted:,}" if r.emitted is not None else "?"
            complete = r.emitted is not None and r.emitted == r.stored
            table.add_row(
                str(r.id),
                Path(r.playbook).name,
                r.status,
                r.started[:19].replace("T", " "),
                str(r.hosts),
                f"{r.stored:,}/{emitted}",
                "yes" if complete else "no",
            )
        Console().print(table)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--color/--no-color", default=None, help="ANSI colours (default: on a terminal).")
@click.pass_context
@errors
def show(ctx: click.Context, run_ref: str, color: bool | None) -> None:
    """The job output, as the default callback printed it."""
    use_color = sys.stdout.isatty() if color is None else color
    with store_session(settings_of(ctx)) as store:
        run_row = store.run(run_ref)
        for block in render.job_output(store.events(run_row.id), color=use_color):
            click.echo(block, color=use_color)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def hosts(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """Host summary: ok / changed / failed / unreachable / skipped / rescued / ignored."""
    from rich.console import Console
    from rich.table import Table

    with store_session(settings_of(ctx)) as store:
        run_row = store.run(run_ref)
        summaries = store.host_summaries(run_row.id)
        if summaries is None:
            raise PlayledgerError(
                f"run {run_row.id} has no stored host summary (stats event) yet: "
                f"{run_row.stored:,} events stored, status {run_row.status}"
            )
        if as_json:
            for s in summaries:
                click.echo(msgspec.json.encode(s.__dict__).decode())
            return
        table = Table(box=None)
        cols = ("host", "ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
        for col in cols:
            table.add_column(col, justify="left" if col == "host" else "right")
        for s in summaries:
            values = (s.ok, s.changed, s.failures, s.dark, s.skipped, s.rescued, s.ignored)
            table.add_row(s.host, *(str(v) for v in values))
        Console().print(table)


def _filters(
    host: str | None,
    event: str | None,
    task: str | None,
    failed: bool,
    changed: bool,
    grep: str | None,
) -> EventFilter:
    return EventFilter(
        host=host,
        event=event,
        task=task,
        failed=True if failed else None,
        changed=True if changed else None,
        text=grep or None,
    )


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--host", help="Only this host.")
@click.option("--event", "event_name", help="Only this event name, e.g. runner_on_failed.")
@click.option("--task", help="Only this task (name or task uuid).")
@click.option("--failed", is_flag=True, help="Only failed events.")
@click.option("--changed", is_flag=True, help="Only changed events.")
@click.option(
    "--grep", metavar="TEXT", help="Only events whose output contains TEXT (any case, literal)."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with every field.")
@click.pass_context
@errors
def events(
    ctx: click.Context,
    run_ref: str,
    host: str | None,
    event_name: str | None,
    task: str | None,
    failed: bool,
    changed: bool,
    grep: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """A run's events, filtered."""
    filters = _filters(host, event_name, task, failed, changed, grep)
    with store_session(settings_of(ctx)) as store:
        run_row = store.run(run_ref)
        stream = store.events(run_row.id, filters, limit)
        if as_json:
            for e in stream:
                click.echo(msgspec.json.encode(e).decode())
            return
        click.echo(f"{'counter':>8}  {'event':<30} {'host':<20} {'flags':<8} task")
        for e in stream:
            flags = ("F" if e.failed else "-") + ("C" if e.changed else "-")
            click.echo(
                f"{e.counter:>8}  {e.event:<30} {e.host or '':<20} {flags:<8} {e.task or ''}"
            )


CSV_FIELDS = [f for f in Event.__struct_fields__]


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (default: stdout).",
)
@click.pass_context
@errors
def export(ctx: click.Context, run_ref: str, fmt: str, output: Path | None) -> None:
    """Every event of a run with every field: JSON lines or CSV."""
    out = output.open("w", newline="") if output else sys.stdout
    try:
        with store_session(settings_of(ctx)) as store:
            run_row = store.run(run_ref)
            if fmt == "jsonl":
                for e in store.events(run_row.id):
                    out.write(msgspec.json.encode(e).decode())
                    out.write("\n")
            else:
                writer = csv.writer(out)
                writer.writerow(CSV_FIELDS)
                for e in store.events(run_row.id):
                    writer.writerow(
                        [
                            bytes(e.event_data).decode() if f == "event_data" else getattr(e, f)
                            for f in CSV_FIELDS
                        ]
                    )
    finally:
        if output:
            out.close()


def _verify_text(report: VerifyReport, hosts: int) -> str:
    lines = [summary_line(report, hosts), f"  run uuid: {report.run}  playbook: {report.playbook}"]
    emitted = "unknown" if report.emitted is None else f"{report.emitted:,}"
    lines.append(f"  events: {report.stored:,} stored, {emitted} emitted")
    if not report.finished:
        lines.append(
            "  no final record: ansible-playbook was killed or crashed (or is still running);"
            " the stored prefix was checked"
        )
    if report.missing:
        shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in report.missing[:20])
        more = " ..." if len(report.missing) > 20 else ""
        lines.append(f"  missing counters: {shown}{more} ({report.missing_count:,} events)")
    else:
        lines.append("  missing counters: none")
    lines.append(f"  duplicate uuids: {report.duplicates}")
    targeted = "?" if report.hosts_targeted is None else str(report.hosts_targeted)
    summary = "no summary" if report.hosts_in_summary is None else str(report.hosts_in_summary)
    lines.append(
        f"  hosts: {targeted} targeted, {summary} in summary, "
        f"{report.hosts_with_events} with events"
    )
    if report.hosts_not_in_summary:
        lines.append(f"  targeted but not in summary: {', '.join(report.hosts_not_in_summary)}")
    lines.append(
        f"  async jobs: {report.async_launched} fire-and-forget launched, "
        f"{len(report.async_unfinished)} never seen finishing"
    )
    for job in report.async_unfinished[:20]:
        lines.append(f"    unfinished: host {job['host']} task {job['task']!r} {job['jid']}")
    chain = "ok" if report.chain_ok else "BROKEN"
    lines.append(f"  hash chain: {chain} ({report.chain_checked:,} events checked)")
    for err in report.chain_errors:
        lines.append(f"    {err}")
    if report.append_errors:
        lines.append(
            f"  LOST: the callback failed to append {report.append_errors} event(s) to the spool"
            " (see Ansible's warnings for the cause)"
        )
    if report.spool_pending:
        lines.append(f"  spool: {report.spool_pending:,} records not yet shipped (playledger ship)")
    for q in report.quarantined:
        lines.append(
            f"  quarantined: {q.get('reason')} in {q.get('file')} at offset {q.get('offset')}"
        )
    return "\n".join(lines)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.pass_context
@errors
def verify(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """Completeness and hash chain; exit 0 only when the run is complete."""
    settings = settings_of(ctx)
    with store_session(settings) as store:
        run_row = store.run(run_ref)
        report = verify_run(store, run_row, settings.spool_dir)
        if as_json:
            click.echo(msgspec.json.encode(report.as_dict()).decode())
        else:
            click.echo(_verify_text(report, run_row.hosts))
    sys.exit(0 if report.complete else 1)


@cli.command()
@click.option(
    "--follow",
    "follow_run",
    metavar="RUN_UUID",
    default=None,
    help="Follow one run's spool while it is written (used by `run`).",
)
@click.option("--pid", type=int, default=None, help="With --follow: the ansible-playbook pid.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to keep retrying after a run ended (PLAYLEDGER_SHIP_TIMEOUT).",
)
@click.pass_context
@errors
def ship(
    ctx: click.Context, follow_run: str | None, pid: int | None, timeout: float | None
) -> None:
    """Drain whatever is left in the spool into the store or PLAYLEDGER_SINK (after a crash
    or an outage)."""
    from playledger.shipper import ShipReport, ship_all, ship_spool
    from playledger.sinks import open_sink
    from playledger.spool import SpoolFile

    settings = settings_of(ctx)
    limit = settings.ship_timeout if timeout is None else timeout
    with closing(open_sink(settings)) as store:
        if follow_run:
            spool = SpoolFile(settings.spool_dir, follow_run)
            if pid is None:
                raise UsageError("--follow needs --pid (the ansible-playbook process to follow)")
            reports: list[ShipReport] = [
                ship_spool(spool, store, settings.batch_size, limit, follow_pid=pid)
            ]
        else:
            reports = ship_all(settings.spool_dir, store, settings.batch_size, limit)
    failed = False
    for r in reports:
        if r.quarantined:
            failed = True
            for b in r.quarantined:
                click.echo(
                    f"playledger: run {r.run}: {b.reason} at offset {b.offset} of "
                    f"{settings.spool_dir / (r.run + '.spool')} quarantined",
                    err=True,
                )
        if r.conflict:
            failed = True
            click.echo(f"playledger: error: {r.conflict}", err=True)
        elif r.busy:
            click.echo(f"run {r.run}: being shipped by another process; skipped")
        elif r.left_records and not r.finished:
            failed = failed or r.last_error is not None
            why = f" (last error: {r.last_error})" if r.last_error else " (run still writing)"
            click.echo(
                f"run {r.run}: {r.inserted:,} stored, {r.left_records:,} left in the spool{why}; "
                "run `playledger ship` to finish",
                err=r.last_error is not None,
            )
        elif not r.finished and r.last_error is not None:
            failed = True  # all sent, but the next hop has not confirmed it: the spool stays
            click.echo(
                f"run {r.run}: {r.inserted:,} sent, not confirmed ({r.last_error}); the spool "
                "is kept: run `playledger ship` to finish",
                err=True,
            )
        elif not follow_run:
            click.echo(f"run {r.run}: {r.inserted:,} stored, {r.duplicates:,} already stored")
    if not reports and not follow_run:
        click.echo("nothing to ship")
    sys.exit(1 if failed else 0)


@cli.group()
def spool() -> None:
    """Inspect the local spool."""


@spool.command("status")
@click.pass_context
@errors
def spool_status(ctx: click.Context) -> None:
    """Backlog per run: records and bytes not yet acknowledged by the store."""
    from playledger.spool import SpoolFile, list_runs, writer_alive

    settings = settings_of(ctx.find_root())
    rows = []
    for run in list_runs(settings.spool_dir):
        sf = SpoolFile(settings.spool_dir, run)
        records, size = sf.backlog()
        rows.append((run, records, size, writer_alive(sf.path), len(sf.quarantined())))
    click.echo(f"spool: {settings.spool_dir}")
    if not rows:
        click.echo("empty: every recorded event has been stored")
        return
    click.echo(f"{'run':<36}  {'records':>8}  {'bytes':>12}  {'writing':<7}  quarantined")
    for run, records, size, alive, quarantined in rows:
        click.echo(
            f"{run:<36}  {records:>8,}  {size:>12,}  {'yes' if alive else 'no':<7}  {quarantined}"
        )


@cli.command("callback-path")
def callback_path() -> None:
    """Print the folder to put in ANSIBLE_CALLBACK_PLUGINS for plain ansible-playbook use."""
    click.echo(plugin_path())


# The server and administration commands live in their own module; importing it registers them.
from playledger import cli_server  # noqa: E402, F401


def main() -> None:
    cli(prog_name="playledger")
