"""API basics: the one error shape (locked here), tokens and scopes, exposure, OpenAPI."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from apitest import Api, in_process
from factories import make_run
from playledger.api.app import create_app
from playledger.api.schema import ErrorItem, error_response
from playledger.api.settings import ApiSettings, check_bind, is_loopback
from playledger.cli import cli
from playledger.errors import UsageError
from playledger.store import Store, open_store
from playledger.store.sqlite import SQLiteStore
from playledger.tokens import digest

ERROR_KEYS = {"detail", "code", "status", "errors"}
ITEM_KEYS = {"index", "field", "message"}


def assert_error(response: object, status: int, code: str) -> dict[str, object]:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code and body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    for item in body["errors"]:  # type: ignore[attr-defined]
        assert set(item) == ITEM_KEYS
    return body


# --- the one error shape --------------------------------------------------------------------


def test_error_shape_is_locked() -> None:
    response = error_response(
        400, "invalid_batch", "2 of 3 records are invalid", [ErrorItem(1, "$.counter", "bad")]
    )
    assert response.status_code == 400
    assert json.loads(bytes(response.body)) == {
        "detail": "2 of 3 records are invalid",
        "code": "invalid_batch",
        "status": 400,
        "errors": [{"index": 1, "field": "$.counter", "message": "bad"}],
    }


def test_every_kind_of_error_uses_the_shape(api: Api) -> None:
    c = api.client
    assert_error(c.get("/api/v1/runs"), 401, "unauthorized")
    assert_error(api.get("/api/v1/nowhere"), 404, "not_found")
    assert_error(api.get("/api/v1/runs/99"), 404, "not_found")
    assert_error(api.get("/api/v2/jobs/99/"), 404, "not_found")
    assert_error(api.get("/api/v2/jobs/abc/"), 400, "invalid_parameter")
    assert_error(c.delete("/api/v1/runs", headers=api.auth()), 405, "method_not_allowed")
    assert_error(api.get("/api/v1/runs?page_size=abc"), 400, "invalid_parameter")
    assert_error(api.get("/api/v1/runs?nonsense=1"), 400, "unknown_parameter")
    assert_error(api.post_body(b"{"), 400, "malformed_json")


def test_store_paths_do_not_leak_into_errors(api: Api) -> None:
    body = assert_error(api.get("/api/v1/runs/nope"), 404, "not_found")
    assert body["detail"] == "no run 'nope'"


# --- tokens and scopes ----------------------------------------------------------------------


def test_no_token_bad_token_and_wrong_scheme_are_401(api: Api) -> None:
    c = api.client
    r = c.get("/api/v1/runs")
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer plt_wrong", "Bearer ", "Basic dXNlcjpwYXNz", "plt_x", "Bearer x"):
        assert_error(c.get("/api/v1/runs", headers={"Authorization": header}), 401, "unauthorized")


def test_scopes(api: Api) -> None:
    api.ingest(make_run(5))
    read, ingest, admin = (api.auth(s) for s in ("read", "ingest", "admin"))
    c = api.client
    # read scope: reads, not writes
    assert c.get("/api/v1/runs", headers=read).status_code == 200
    assert_error(c.post("/api/v1/ingest", content=b"[]", headers=read), 403, "forbidden")
    # ingest scope: writes and its own verify report, nothing else
    assert c.post("/api/v1/ingest", content=b"[]", headers=ingest).status_code == 200
    assert c.get("/api/v1/runs/1/verify", headers=ingest).status_code == 200
    assert_error(c.get("/api/v1/runs", headers=ingest), 403, "forbidden")
    assert_error(c.get("/metrics", headers=ingest), 403, "forbidden")
    assert_error(c.get("/api/v1/tokens", headers=read), 403, "forbidden")
    # admin implies every scope
    for url in ("/api/v1/runs", "/api/v1/runs/1/events", "/metrics", "/api/v1/tokens"):
        assert c.get(url, headers=admin).status_code == 200, url
    assert c.post("/api/v1/ingest", content=b"[]", headers=admin).status_code == 200


def test_revoked_token_is_refused_at_once(api: Api) -> None:
    assert api.get("/api/v1/runs").status_code == 200
    api.store.revoke_token("t-read", "2026-12-04T00:00:00Z")
    assert_error(api.get("/api/v1/runs"), 401, "unauthorized")


def test_only_a_digest_is_stored(api: Api, api_store: Store) -> None:
    rows = api.client.get("/api/v1/tokens", headers=api.auth("admin")).json()
    assert {r["name"] for r in rows} == {"t-ingest", "t-read", "t-admin"}
    token = api.tokens["read"]
    raw = json.dumps(rows)
    assert token not in raw and digest(token) not in raw
    assert api_store.token_by_digest(digest(token)) is not None
    if isinstance(api_store, SQLiteStore):
        assert token.encode() not in Path(api_store.path).read_bytes()


def test_token_cli(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    runner = CliRunner()
    out = runner.invoke(cli, ["--db", db, "token", "create", "--scope", "ingest", "--name", "ci"])
    assert out.exit_code == 0, out.output
    token = out.stdout.strip()
    assert token.startswith("plt_") and len(token) > 40
    store = open_store(db)
    try:
        row = store.token_by_digest(digest(token))
        assert row is not None and (row.name, row.scope) == ("ci", "ingest")
    finally:
        store.close()
    again = runner.invoke(cli, ["--db", db, "token", "create", "--scope", "read", "--name", "ci"])
    assert again.exit_code != 0 and "exists already" in again.output
    listed = runner.invoke(cli, ["--db", db, "token", "list"])
    assert "ci" in listed.output and token not in listed.output and token[:10] in listed.output
    bad = runner.invoke(cli, ["--db", db, "token", "create", "--scope", "root", "--name", "x"])
    assert bad.exit_code == 2
    revoked = runner.invoke(cli, ["--db", db, "token", "revoke", "ci"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    gone = runner.invoke(cli, ["--db", db, "token", "revoke", "ci"])
    assert gone.exit_code == 2 and "no active token" in gone.output
    assert "ci" not in runner.invoke(cli, ["--db", db, "token", "list"]).output
    assert "ci" in runner.invoke(cli, ["--db", db, "token", "list", "--all"]).output


# --- exposure -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"])
def test_loopback_binds_are_allowed_without_auth(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, auth=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_other_binds_need_auth(host: str) -> None:
    with pytest.raises(UsageError, match="refusing to bind"):
        check_bind(host, auth=False)
    check_bind(host, auth=True)


def test_serve_refuses_before_opening_anything(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    out = CliRunner().invoke(
        cli,
        ["--db", str(db), "serve", "--host", "0.0.0.0"],
        env={"PLAYLEDGER_AUTH": "off"},
    )
    assert out.exit_code == 2 and "refusing to bind 0.0.0.0" in out.output
    assert not db.exists()


def test_auth_off_reads_without_a_token(api_store: Store) -> None:
    app = create_app(api_store, ApiSettings(auth=False))
    with in_process(app) as client:
        assert client.get("/api/v1/runs").status_code == 200
        assert client.post("/api/v1/ingest", content=b"[]").status_code == 200


# --- OpenAPI --------------------------------------------------------------------------------


def test_openapi_document(api: Api) -> None:
    r = api.client.get("/api/v1/openapi.json")  # public: it describes, it does not disclose
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    for path in (
        "/api/v1/ingest",
        "/api/v1/runs",
        "/api/v1/runs/{run_ref}",
        "/api/v1/runs/{run_ref}/events",
        "/api/v1/runs/{run_ref}/events/stream",
        "/api/v1/runs/{run_ref}/hosts",
        "/api/v1/runs/{run_ref}/stdout",
        "/api/v1/runs/{run_ref}/verify",
        "/api/v1/hosts/{host}/runs",
        "/api/v2/jobs/{job_id}/",
        "/api/v2/jobs/{job_id}/job_events/",
        "/api/v2/jobs/{job_id}/events/",
        "/api/v2/jobs/{job_id}/job_host_summaries/",
        "/api/v2/jobs/{job_id}/stdout/",
        "/api/v2/metrics/",
        "/metrics",
    ):
        assert path in paths, path
    schemas = doc["components"]["schemas"]
    assert {"ErrorBody", "RunOut", "RunList", "EventList", "Event", "IngestResponse"} <= set(
        schemas
    )
    assert {"HostRunList", "HostRunOut", "HostSummaryOut"} <= set(schemas)
    assert set(schemas["ErrorBody"]["required"]) == ERROR_KEYS
    params = {p["name"] for p in paths["/api/v1/runs/{run_ref}/events"]["get"]["parameters"]}
    assert {"host", "event", "task", "failed", "changed", "page_size", "after", "count"} <= params
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    text = json.dumps(doc)
    assert '"422"' not in text and "HTTPValidationError" not in text  # errors are 400s
    assert "400" in paths["/api/v1/runs"]["get"]["responses"]
    msgspec.json.encode(doc)  # plain JSON all the way down


def test_health_needs_no_token(api: Api) -> None:
    assert api.client.get("/api/v1/health").json() == {"status": "ok"}
