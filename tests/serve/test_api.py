"""The JSON API and the access rules, in process (FastAPI's TestClient), over a copy of the demo table."""

from __future__ import annotations

import re

import lancedb
import pytest
from fastapi.testclient import TestClient

from clipline.jobs.cli import main
from clipline.moderation.review_log import ReviewLog
from clipline.serve.app import create_app
from clipline.serve.settings import ServeConfigError, ServeSettings, parse_tokens
from clipline.table.store import ClipTable
from tests.serve.conftest import RUN_ID, TOKENS

LOCAL = "http://127.0.0.1"


def app_client(db: str, **settings) -> TestClient:
    return TestClient(create_app(ServeSettings(db=db, table="media", **settings)), base_url=LOCAL)


@pytest.fixture(scope="module")
def client(table_copy):
    with app_client(table_copy, reviewer="tester") as client:
        yield client


@pytest.fixture(scope="module")
def token_client(table_copy):
    with app_client(table_copy, auth="token", tokens=TOKENS) as client:
        yield client


def stored(db: str, row_id: str) -> dict:
    rows = lancedb.connect(db).open_table("media").search().where(f"id = '{row_id}'").limit(1).to_list()
    return rows[0]


def csrf_of(client: TestClient) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["results"]]


def test_a_text_query_finds_the_demo_rows_that_show_it(client, demo):
    response = client.get("/api/search", params={"q": "a photo of a red star.", "k": 5})
    found = ids(response)
    shown = [(demo.rows[row_id].get("shape"), demo.rows[row_id].get("colour")) for row_id in found]
    assert shown.count(("star", "red")) >= 4, shown
    scores = [row["score"] for row in response.json()["results"]]
    assert scores == sorted(scores, reverse=True)
    assert response.json()["results"][0]["thumbnail_url"] == f"/api/thumbnail/{found[0]}"


def test_filters_narrow_the_results(client, table_copy):
    assert {
        stored(table_copy, row_id)["decision"]
        for row_id in ids(client.get("/api/search", params={"q": "a star", "decision": "block"}))
    } == {"block"}
    star = ids(
        client.get(
            "/api/search", params={"q": "a circle", "score_category": "star", "score_min": "0.9", "score_max": ""}
        )
    )
    assert star and all(
        next(s["score"] for s in stored(table_copy, row_id)["scores"] if s["category"] == "star") >= 0.9
        for row_id in star
    )
    failed = client.get("/api/search", params={"status": "failed", "k": 50}).json()["results"]
    assert len(failed) == 5 and all(row["error_code"] for row in failed)  # the demo's broken rows, browsed
    labelled = ids(client.get("/api/search", params={"q": "a shape", "label": "cross", "k": 10}))
    assert labelled and all("cross" in stored(table_copy, row_id)["labels"] for row_id in labelled)
    bad = client.get("/api/search", params={"q": "x", "where": "no_such_column = 1"})
    assert bad.status_code == 400 and "no_such_column" in bad.json()["detail"]
    assert client.get("/api/search", params={"decision": "maybe"}).status_code == 400
    assert client.get("/api/search", params={"like": "no-such-row"}).status_code == 400
    page = client.get("/", params={"q": "x", "where": "no_such_column = 1"})
    assert page.status_code == 200 and re.search(r'class="error"[^>]*>[^<]*no_such_column', page.text)


def test_an_uploaded_image_finds_its_original_first_and_more_like_this_skips_the_row(client, demo):
    original = next(row for row in demo.rows.values() if row.get("kind") == "image" and row["id"].endswith("7"))
    files = {"image": ("query.jpg", original["image"], "image/jpeg")}
    response = client.post("/api/search/image", files=files, data={"k": "3"})
    assert ids(response)[0] == original["id"] and response.json()["results"][0]["score"] > 0.99
    like = ids(client.get("/api/search", params={"like": original["id"], "k": 5}))
    assert len(like) == 5 and original["id"] not in like
    empty = client.post("/api/search/image", files={"image": ("none.png", b"", "image/png")})
    assert empty.status_code == 400


def test_decisions_need_the_pages_csrf_token_write_overrides_and_undo(client, table_copy):
    page = client.get("/api/queue", params={"size": 3}).json()
    assert page["reviewer"] == "tester" and len(page["rows"]) == 3
    target = page["rows"][0]["id"]
    before = stored(table_copy, target)
    body = {"decisions": [{"id": target, "decision": "block", "note": "clearly"}]}
    assert client.post("/api/decide", json=body).status_code == 403  # a forged post has no token
    headers = {"X-CSRF-Token": csrf_of(client)}
    refused = client.post("/api/decide", json=body, headers={**headers, "Origin": "http://evil.example"})
    assert refused.status_code == 403  # another site's page, even with a stolen token
    decided = client.post("/api/decide", json=body, headers=headers)
    assert decided.status_code == 200, decided.text
    row = stored(table_copy, target)
    assert (row["override_decision"], row["override_by"], row["override_note"]) == ("block", "tester", "clearly")
    assert (row["image_embedding"], row["text_embedding"]) == (before["image_embedding"], before["text_embedding"])
    table = ClipTable.open(table_copy, "media")
    assert ReviewLog(table).read(decided.json()["batch"])["source"] == "web"
    assert target not in [row["id"] for row in client.get("/api/queue", params={"size": 50}).json()["rows"]]

    undone = client.post("/api/undo", json={"batch": decided.json()["batch"]}, headers=headers)
    assert undone.status_code == 200 and undone.json()["undone"] == 1
    assert stored(table_copy, target)["override_decision"] is None
    unknown = client.post("/api/decide", json={"decisions": [{"id": "ghost", "decision": "allow"}]}, headers=headers)
    assert unknown.status_code == 400 and "not in table" in unknown.json()["detail"]


def test_with_token_auth_every_request_needs_a_token(token_client, table_copy):
    assert token_client.get("/api/search", params={"q": "a star"}).status_code == 401
    assert token_client.get("/docs", follow_redirects=False).status_code == 303  # the docs too
    page = token_client.get("/queue", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert token_client.get("/api/queue", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401

    alice = {"Authorization": "Bearer alice-token-0123456789"}
    queue = token_client.get("/api/queue", params={"size": 2}, headers=alice).json()
    assert queue["reviewer"] == "alice"
    body = {"decisions": [{"id": queue["rows"][0]["id"], "decision": "allow"}]}
    assert token_client.post("/api/decide", json=body, headers=alice).status_code == 200  # bearer: no CSRF token
    assert stored(table_copy, queue["rows"][0]["id"])["override_by"] == "alice"

    login = token_client.post(
        "/login", data={"token": "bob-token-0123456789ab", "next": "/queue"}, follow_redirects=False
    )
    assert login.status_code == 303 and login.headers["location"] == "/queue"
    assert token_client.get("/api/session").json()["reviewer"] == "bob"
    token_client.cookies.clear()
    assert token_client.post("/login", data={"token": "nope"}).status_code == 401


def test_the_reviewer_can_come_from_a_trusted_proxy_header(table_copy):
    with app_client(table_copy, reviewer_header="X-Forwarded-User") as client:
        assert client.get("/api/session").status_code == 401
        assert client.get("/api/session", headers={"X-Forwarded-User": "carol"}).json()["reviewer"] == "carol"


def test_a_loopback_server_answers_only_to_loopback_host_names(client):
    assert client.get("/healthz", headers={"Host": "rebound.example"}).status_code == 400  # DNS rebinding
    assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200


def test_an_open_bind_needs_token_auth_and_tokens_are_checked():
    with pytest.raises(ServeConfigError, match="add --auth token"):
        ServeSettings(db="db", table="media", host="0.0.0.0").check()
    ServeSettings(db="db", table="media", host="0.0.0.0", auth="token", tokens=TOKENS).check()
    assert parse_tokens("# reviewers\nalice: a-long-token-123456\nbob:b-long-token-1234567", "f") == {
        "a-long-token-123456": "alice",
        "b-long-token-1234567": "bob",
    }
    with pytest.raises(ServeConfigError, match="shorter than 16"):
        parse_tokens("alice:short", "f")
    with pytest.raises(ServeConfigError, match="reuses the token"):
        parse_tokens("a:same-token-123456789,b:same-token-123456789", "f")


def test_the_api_is_documented_offline_and_runs_link_their_reports(client):
    docs = client.get("/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/queue", "/api/decide", "/api/undo"} <= set(paths)
    runs = client.get("/runs").text
    assert RUN_ID in runs and f"/runs/{RUN_ID}/report" in runs
    report = client.get(f"/runs/{RUN_ID}/report")
    assert report.status_code == 200 and "default-src 'none'" in report.headers["content-security-policy"]
    assert client.get("/runs/nope/report").status_code == 404


def test_the_serve_verb_refuses_an_open_bind_before_opening_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CLIPLINE_SERVE_TOKENS", raising=False)
    base = ["serve", "--db", str(tmp_path / "nowhere"), "--table", "media"]
    assert main([*base, "--host", "0.0.0.0"]) == 2
    assert "add --auth token" in capsys.readouterr().err
    assert main([*base, "--host", "0.0.0.0", "--auth", "token"]) == 2
    assert "CLIPLINE_SERVE_TOKENS" in capsys.readouterr().err
