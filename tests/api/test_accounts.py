"""Multi-user mode against a real server: two (three) real users, real argon2, real keys and
session cookies; isolation over REST, SSE, both WebSockets, /v1 and export.

User B gets 404 (never 403) for anything of A's that was not shared: ids are not confirmed.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from studyrag.auth.mode import resolve_mode
from studyrag.config import AuthSettings, Settings
from tests.api.conftest import NOTES, LiveServer, run_server, server_settings

PASSWORD_A = "alice-correct-horse"
PASSWORD_B = "bob-battery-staple"


@dataclass
class Users:
    server: LiveServer
    a_key: str  # admin, all scopes
    b_key: str  # read + chat + admin scope (a non-admin user)
    b_read_key: str  # read only
    c_key: str

    @property
    def origin(self) -> str:
        return self.server.base


async def _make_users(settings: Settings) -> dict[str, str]:
    """Users and keys made through the same services as the CLI, before the server starts."""
    from studyrag.auth.keys import ApiKeyService
    from studyrag.auth.users import UserService
    from studyrag.db.auth import AuthRepo
    from studyrag.db.session import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    await db.migrate()
    try:
        repo = AuthRepo(db)
        users, keys = UserService(repo), ApiKeyService(repo)
        alice = await users.create("alice", PASSWORD_A, is_admin=True)
        bob = await users.create("bob", PASSWORD_B)
        carol = await users.create("carol", "carol-password-1")
        return {
            "a": (await keys.create(alice, name="a")).key,
            "b": (await keys.create(bob, name="b", scopes=["read", "chat", "admin"])).key,
            "b_read": (await keys.create(bob, name="b-read", scopes=["read"])).key,
            "c": (await keys.create(carol, name="c")).key,
        }
    finally:
        await db.aclose()


def multi_user_settings(data_dir: Path) -> Settings:
    settings = server_settings(data_dir)
    settings.auth = AuthSettings(mode="multi-user")
    return settings


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    settings = multi_user_settings(tmp_path_factory.mktemp("accounts"))
    keys = asyncio.run(_make_users(settings))
    with run_server(settings, ingest=False) as server:
        yield Users(server, keys["a"], keys["b"], keys["b_read"], keys["c"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(users: Users, key: str) -> httpx.Client:
    return httpx.Client(base_url=users.server.base, headers=bearer(key), timeout=120)


def house(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error_code"] == code, body
    assert set(body) == {"error_code", "message", "details", "request_id"}
    return body


def wait_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """Follow the job's SSE stream (as its owner) until it ends."""
    with http.stream("GET", f"/api/jobs/{job_id}/events") as events:
        assert events.status_code == 200
        for line in events.iter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                job = data.get("job", data)
                if job.get("status") in ("completed", "failed", "cancelled"):
                    return dict(job)
    return dict(http.get(f"/api/jobs/{job_id}").json())


@dataclass
class AliceWorld:
    notebook: str
    document: str
    chunk: int
    job: str
    conversation: str


@pytest.fixture(scope="module")
def alice(users: Users) -> AliceWorld:
    """A's notebook with one ingested document and one answered conversation."""
    with client(users, users.a_key) as a:
        nb = a.post("/api/notebooks", json={"name": "Alice biology"})
        assert nb.status_code == 201, nb.text
        notebook = nb.json()["id"]
        up = a.post(
            f"/api/notebooks/{notebook}/documents",
            files={"files": ("plants.md", NOTES.encode(), "text/markdown")},
        )
        assert up.status_code == 202, up.text
        job = up.json()["job_id"]
        assert wait_job(a, job)["status"] == "completed"
        docs = a.get(f"/api/notebooks/{notebook}/documents").json()["items"]
        document = docs[0]["id"]
        chunk = a.get(f"/api/documents/{document}").json()["chunks"][0]["id"]
        answer = a.post(
            "/api/chat/message",
            json={"message": "What absorbs light?", "notebook_id": notebook, "max_tokens": 8},
        )
        assert answer.status_code == 200, answer.text
        conversation = answer.json()["conversation"]["id"]
    return AliceWorld(notebook, document, chunk, job, conversation)


# --- the mode -------------------------------------------------------------------------------
def test_the_mode_follows_the_bound_address() -> None:
    assert resolve_mode("auto", "127.0.0.1") == ("local", None)
    assert resolve_mode("auto", "localhost") == ("local", None)
    assert resolve_mode("auto", "::1") == ("local", None)
    assert resolve_mode("auto", "0.0.0.0")[0] == "multi-user"
    assert resolve_mode("auto", "192.168.1.20")[0] == "multi-user"
    assert resolve_mode("multi-user", "127.0.0.1") == ("multi-user", None)
    mode, warning = resolve_mode("local", "0.0.0.0")
    assert mode == "local" and warning is not None and "OFF" in warning


def test_health_reports_the_mode_and_needs_no_login(users: Users) -> None:
    res = httpx.get(f"{users.server.base}/health", timeout=30)
    assert res.status_code == 200
    assert res.json()["auth"] == {"mode": "multi-user", "warning": None}


# --- authentication -------------------------------------------------------------------------
def test_without_credentials_everything_but_health_and_the_page_is_401(users: Users) -> None:
    with httpx.Client(base_url=users.server.base, timeout=30) as anon:
        for method, path in (
            ("GET", "/api/notebooks"),
            ("POST", "/api/search"),
            ("GET", "/api/chat/conversations"),
            ("GET", "/api/auth/me"),
            ("GET", "/api/config"),
            ("GET", "/metrics"),
        ):
            res = anon.request(method, path, json={"query": "x"} if method == "POST" else None)
            house(res, 401, "AUTH_001")
            assert res.headers["www-authenticate"] == "Bearer"
        assert anon.get("/").status_code == 200
        v1 = anon.get("/v1/models")
        assert v1.status_code == 401 and v1.json()["error"]["code"] == "AUTH_001"
        house(anon.get("/api/notebooks", headers=bearer("srk_nope_nope")), 401, "AUTH_001")
        house(anon.get("/api/notebooks", headers={"Authorization": "Basic eA=="}), 401, "AUTH_001")


def test_login_sets_a_safe_cookie_and_logout_ends_the_session(users: Users) -> None:
    origin = {"Origin": users.origin}
    with httpx.Client(base_url=users.server.base, timeout=60, headers=origin) as web:
        house(
            web.post("/api/auth/login", json={"name": "alice", "password": "wrong-password"}),
            401,
            "AUTH_003",
        )
        house(
            web.post("/api/auth/login", json={"name": "nobody", "password": "wrong-password"}),
            401,
            "AUTH_003",
        )
        res = web.post("/api/auth/login", json={"name": "ALICE", "password": PASSWORD_A})
        assert res.status_code == 200, res.text
        cookie = res.headers["set-cookie"].lower()
        assert "studyrag_session=" in cookie
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "secure" not in cookie  # plain http here; Secure on https
        me = web.get("/api/auth/me").json()
        assert (
            me["user"]["name"] == "alice" and me["via"] == "session" and me["mode"] == "multi-user"
        )
        # A state change with the cookie must come from the page: no Origin, no change.
        token = web.cookies["studyrag_session"]
        bare = httpx.post(
            f"{users.server.base}/api/notebooks",
            json={"name": "csrf"},
            cookies={"studyrag_session": token},
            timeout=30,
        )
        house(bare, 403, "AUTH_006")
        evil = web.post(
            "/api/notebooks", json={"name": "evil"}, headers={"Origin": "http://evil.example"}
        )
        house(evil, 403, "REQUEST_005")
        made = web.post("/api/notebooks", json={"name": "Alice from the page"})
        assert made.status_code == 201, made.text
        assert web.post("/api/auth/logout").status_code == 204
        house(
            httpx.get(
                f"{users.server.base}/api/auth/me", cookies={"studyrag_session": token}, timeout=30
            ),
            401,
            "AUTH_001",
        )


def test_key_scopes_and_admin_routes(users: Users, alice: AliceWorld) -> None:
    with client(users, users.b_read_key) as reader, client(users, users.b_key) as b:
        assert reader.get("/api/notebooks").status_code == 200
        body = house(reader.post("/api/chat/conversations", json={}), 403, "AUTH_002")
        assert body["details"]["scope"] == "chat"
        house(reader.post("/api/notebooks", json={"name": "no"}), 403, "AUTH_002")
        # A non-admin user: no settings, no models, no live client list, no metrics.
        house(b.get("/api/config"), 403, "AUTH_002")
        house(b.get("/api/models"), 403, "AUTH_002")
        house(b.get("/metrics"), 403, "AUTH_002")
        house(b.get("/api/chat/stats", params={"clients": "true"}), 403, "AUTH_002")
        totals = b.get("/api/chat/stats")
        assert totals.status_code == 200
        assert "clients_per_conversation" not in totals.json()["websocket"]
    with client(users, users.a_key) as a:
        full = a.get("/api/chat/stats", params={"clients": "true"})
        assert full.status_code == 200 and "clients" in full.json()["websocket"]
        assert a.get("/api/config").status_code == 200
        assert a.get("/metrics").status_code == 200


async def test_a_revoked_or_expired_key_stops_working(users: Users) -> None:
    from studyrag.auth.keys import ApiKeyService
    from studyrag.auth.users import UserService
    from studyrag.db.auth import AuthRepo
    from studyrag.db.models import ApiKey
    from studyrag.db.session import Database

    db = Database(users.server.settings.database_url)
    try:
        repo = AuthRepo(db)
        carol = await UserService(repo).get("carol")
        keys = ApiKeyService(repo)
        made = await keys.create(carol, name="short", scopes=["read"], expires_days=1)
        async with httpx.AsyncClient(base_url=users.server.base, timeout=30) as http:
            assert (await http.get("/api/notebooks", headers=bearer(made.key))).status_code == 200
            listed = [k for k in await keys.all(user=carol) if k.id == made.id]
            assert listed and listed[0].last_used_at is not None
            assert "key" not in listed[0].model_dump()
            async with db.session() as s:
                row = await s.get(ApiKey, made.id)
                assert row is not None
                row.expires_at = row.created_at
            res = await http.get("/api/notebooks", headers=bearer(made.key))
            assert res.status_code == 401 and "expired" in res.json()["message"]
            other = await keys.create(carol, name="revoked", scopes=["read"])
            assert (await http.get("/api/notebooks", headers=bearer(other.key))).status_code == 200
            await keys.revoke(other.id)
            res = await http.get("/api/notebooks", headers=bearer(other.key))
            assert res.status_code == 401 and "revoked" in res.json()["message"]
    finally:
        await db.aclose()


# --- isolation ------------------------------------------------------------------------------
def test_b_gets_404_for_everything_of_a_over_rest(users: Users, alice: AliceWorld) -> None:
    nb, doc, cid, job = alice.notebook, alice.document, alice.conversation, alice.job
    with client(users, users.b_key) as b:
        listed = b.get("/api/notebooks").json()["items"]
        assert nb not in {n["id"] for n in listed}
        assert doc not in {d["id"] for d in b.get("/api/documents").json()["items"]}
        assert cid not in {c["id"] for c in b.get("/api/chat/conversations").json()["items"]}
        cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
            ("GET", f"/api/notebooks/{nb}", None, "NB_001"),
            ("PUT", f"/api/notebooks/{nb}", {"name": "mine"}, "NB_001"),
            ("DELETE", f"/api/notebooks/{nb}", None, "NB_001"),
            ("GET", f"/api/notebooks/{nb}/documents", None, "NB_001"),
            ("POST", f"/api/notebooks/{nb}/reindex", None, "NB_001"),
            ("GET", f"/api/notebooks/{nb}/export", None, "NB_001"),
            ("GET", f"/api/notebooks/{nb}/shares", None, "NB_001"),
            ("POST", f"/api/notebooks/{nb}/shares", {"user": "bob", "role": "editor"}, "NB_001"),
            ("GET", "/api/chat/conversations", {"notebook_id": nb}, "NB_001"),
            ("POST", "/api/search", {"query": "chlorophyll", "notebook_id": nb}, "NB_001"),
            ("POST", "/api/chat/conversations", {"notebook_id": nb}, "NB_001"),
            ("GET", f"/api/documents/{doc}", None, "DOC_004"),
            ("GET", f"/api/documents/{doc}/file", None, "DOC_004"),
            ("GET", f"/api/documents/{doc}/text", None, "DOC_004"),
            ("GET", f"/api/documents/{doc}/pages/1.png", None, "DOC_004"),
            ("DELETE", f"/api/documents/{doc}", None, "DOC_004"),
            ("POST", f"/api/documents/{doc}/cancel", None, "DOC_004"),
            ("POST", f"/api/documents/{doc}/retry", None, "DOC_004"),
            ("POST", f"/api/documents/{doc}/reindex", None, "DOC_004"),
            ("GET", f"/api/documents?notebook_id={nb}", None, "NB_001"),
            ("GET", f"/api/chunks/{alice.chunk}", None, "DOC_012"),
            ("GET", f"/api/jobs/{job}", None, "JOB_001"),
            ("GET", f"/api/jobs/{job}/events", None, "JOB_001"),
            ("POST", f"/api/jobs/{job}/cancel", None, "JOB_001"),
            ("GET", f"/api/chat/conversations/{cid}", None, "CHAT_005"),
            ("PUT", f"/api/chat/conversations/{cid}", {"title": "mine"}, "CHAT_005"),
            ("DELETE", f"/api/chat/conversations/{cid}", None, "CHAT_005"),
            ("GET", f"/api/chat/conversations/{cid}/messages", None, "CHAT_005"),
            ("POST", f"/api/chat/conversations/{cid}/stop", None, "CHAT_005"),
            ("POST", f"/api/chat/conversations/{cid}/cleanup", {"keep_last": 1}, "CHAT_005"),
            ("POST", "/api/chat/message", {"message": "hi", "conversation_id": cid}, "CHAT_005"),
            ("GET", f"/api/chat/stream/{cid}", None, "CHAT_005"),
            ("POST", f"/api/chat/stream/{cid}", {"message": "hi"}, "CHAT_005"),
        ]
        for method, path, body, code in cases:
            if method == "GET" and body is not None:
                res = b.get(path, params=body)
            else:
                res = b.request(method, path, json=body)
            assert res.status_code == 404, (method, path, res.status_code, res.text)
            assert res.json()["error_code"] == code, (method, path, res.text)
            # The same answer as for an id that does not exist.
            fake = path.replace(nb, "f" * 32).replace(doc, "e" * 32).replace(cid, "d" * 32)
            fake = fake.replace(job, "c" * 32).replace(str(alice.chunk), "999999")
            if fake != path:
                if method == "GET" and body is not None:
                    twin = b.get(fake, params=body)
                else:
                    twin = b.request(method, fake, json=body)
                assert twin.status_code == 404, (fake, twin.text)
                assert twin.json()["error_code"] == code
    with client(users, users.a_key) as a:
        # Nothing B tried changed anything of A's.
        assert a.get(f"/api/notebooks/{nb}").json()["name"] == "Alice biology"
        assert a.get(f"/api/chat/conversations/{cid}").status_code == 200
        assert a.get(f"/api/documents/{doc}").json()["status"] == "completed"


def test_b_cannot_reach_a_over_v1(users: Users, alice: AliceWorld) -> None:
    with client(users, users.b_key) as b, client(users, users.a_key) as a:
        ids = {m["id"] for m in b.get("/v1/models").json()["data"]}
        assert "studyrag/Alice biology" not in ids
        assert "studyrag/Alice biology" in {m["id"] for m in a.get("/v1/models").json()["data"]}
        hidden = b.get("/v1/models/studyrag/Alice biology")
        missing = b.get("/v1/models/studyrag/No such notebook")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"]["code"] == missing.json()["error"]["code"]
        chat = {"model": "studyrag/Alice biology", "messages": [{"role": "user", "content": "x"}]}
        assert b.post("/v1/chat/completions", json=chat).status_code == 404
        mine = b.post("/api/notebooks", json={"name": "Bob notes"}).json()
        bob_chat = {**chat, "model": "studyrag/Bob notes", "conversation_id": alice.conversation}
        res = b.post("/v1/chat/completions", json=bob_chat)
        assert res.status_code == 404, res.text
        assert mine["id"]


async def test_b_cannot_open_a_websocket_on_a_s_data(users: Users, alice: AliceWorld) -> None:
    base = f"ws://127.0.0.1:{users.server.port}"
    for path in (f"/ws/chat/{alice.conversation}", f"/ws/notebooks/{alice.notebook}"):
        # No credentials: the handshake is refused.
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(base + path):
                pass
        assert refused.value.response.status_code == 403
        # B's key: answered exactly as an id that does not exist.
        async with websockets.connect(base + path, additional_headers=bearer(users.b_key)) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert frame["type"] == "error" and frame["error_code"] in ("CHAT_005", "NB_001")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    # A's own key opens both.
    async with websockets.connect(
        base + f"/ws/chat/{alice.conversation}", additional_headers=bearer(users.a_key)
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "connected"


# --- shares ---------------------------------------------------------------------------------
async def test_a_shared_notebook_shares_documents_never_conversations(
    users: Users, alice: AliceWorld
) -> None:
    nb = alice.notebook
    async with (
        httpx.AsyncClient(
            base_url=users.server.base, headers=bearer(users.a_key), timeout=120
        ) as a,
        httpx.AsyncClient(
            base_url=users.server.base, headers=bearer(users.b_key), timeout=120
        ) as b,
    ):
        share = await a.post(f"/api/notebooks/{nb}/shares", json={"user": "bob", "role": "viewer"})
        assert share.status_code == 201, share.text
        assert share.json()["user"] == "bob" and share.json()["role"] == "viewer"
        shares = (await a.get(f"/api/notebooks/{nb}/shares")).json()["items"]
        assert [(s["user"], s["role"]) for s in shares] == [("bob", "viewer")]
        # A viewer: reads, searches and chats; cannot add or remove sources, nor reshare.
        seen = await b.get(f"/api/notebooks/{nb}")
        assert seen.status_code == 200 and seen.json()["role"] == "viewer"
        listed = (await b.get("/api/notebooks")).json()["items"]
        assert {x["id"]: x["role"] for x in listed}[nb] == "viewer"
        assert (await a.get(f"/api/notebooks/{nb}")).json()["role"] == "owner"
        found = await b.post("/api/search", json={"query": "chlorophyll", "notebook_id": nb})
        assert found.status_code == 200 and found.json()["results"]
        assert (await b.get(f"/api/documents/{alice.document}/text")).status_code == 200
        files = {"files": ("more.md", b"# More\n\nXylem carries water.", "text/markdown")}
        house(await b.post(f"/api/notebooks/{nb}/documents", files=files), 403, "AUTH_002")
        house(await b.delete(f"/api/documents/{alice.document}"), 403, "AUTH_002")
        house(
            await b.post(f"/api/notebooks/{nb}/shares", json={"user": "carol", "role": "viewer"}),
            403,
            "AUTH_002",
        )
        house(await b.get(f"/api/notebooks/{nb}/export"), 403, "AUTH_002")
        # A's conversation stays private inside the shared notebook.
        assert (await b.get(f"/api/chat/conversations/{alice.conversation}")).status_code == 404
        listed = await b.get("/api/chat/conversations", params={"notebook_id": nb})
        assert alice.conversation not in {c["id"] for c in listed.json()["items"]}

        # The notebook socket: B sees B's conversation events, never A's.
        url = f"ws://127.0.0.1:{users.server.port}/ws/notebooks/{nb}"
        async with websockets.connect(url, additional_headers=bearer(users.b_key)) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ready["type"] == "ready"
            assert {d["id"] for d in ready["documents"]} == {alice.document}
            a_conv = await a.post(
                "/api/chat/conversations", json={"notebook_id": nb, "title": "A secret"}
            )
            assert a_conv.status_code == 201
            b_conv = await b.post(
                "/api/chat/conversations", json={"notebook_id": nb, "title": "B own"}
            )
            assert b_conv.status_code == 201
            seen: list[dict[str, Any]] = []
            while not any(e.get("conversation", {}).get("id") == b_conv.json()["id"] for e in seen):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            conversations = {e["conversation"]["id"] for e in seen if "conversation" in e}
            assert conversations == {b_conv.json()["id"]}
            assert "A secret" not in json.dumps(seen)
        # Even the number of A's conversations is A's: B counts only B's own.
        assert (await b.get(f"/api/notebooks/{nb}")).json()["conversations"] == 1
        assert (await a.get(f"/api/notebooks/{nb}")).json()["conversations"] == 2
        # B's conversation is B's: A (the notebook's owner) cannot read it.
        assert (await a.get(f"/api/chat/conversations/{b_conv.json()['id']}")).status_code == 404
        # ... nor export it: an export holds only the exporter's conversations.
        export = await a.get(f"/api/notebooks/{nb}/export")
        assert export.status_code == 200
        with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
            titles = {
                json.loads(archive.read(name))["title"]
                for name in archive.namelist()
                if name.startswith("conversations/")
            }
        assert "A secret" in titles and "B own" not in titles

        # Editor: may add sources.
        await a.post(f"/api/notebooks/{nb}/shares", json={"user": "bob", "role": "editor"})
        assert (await b.get(f"/api/notebooks/{nb}")).json()["role"] == "editor"
        added = await b.post(f"/api/notebooks/{nb}/documents", files=files)
        assert added.status_code == 202, added.text
        # The job is B's: B follows it, A (the notebook's owner) may too, carol not.
        job = added.json()["job_id"]
        assert (await b.get(f"/api/jobs/{job}")).status_code == 200
        assert (await a.get(f"/api/jobs/{job}")).status_code == 200
        with client(users, users.c_key) as c:
            assert c.get(f"/api/jobs/{job}").status_code == 404
            assert c.get(f"/api/notebooks/{nb}").status_code == 404
            # Shared with everyone: carol too, as viewer.
            everyone = await a.post(
                f"/api/notebooks/{nb}/shares", json={"user": "*", "role": "viewer"}
            )
            assert everyone.status_code == 201
            assert c.get(f"/api/notebooks/{nb}").status_code == 200
            house(c.post(f"/api/notebooks/{nb}/reindex"), 403, "AUTH_002")
            removed = await a.request("DELETE", f"/api/notebooks/{nb}/shares", json={"user": "*"})
            assert removed.status_code == 200
            assert c.get(f"/api/notebooks/{nb}").status_code == 404
        removed = await a.request("DELETE", f"/api/notebooks/{nb}/shares", json={"user": "bob"})
        assert removed.status_code == 200
        assert (await b.get(f"/api/notebooks/{nb}")).status_code == 404
        # B's conversation there is out of B's reach until it is shared again.
        assert (await b.get(f"/api/chat/conversations/{b_conv.json()['id']}")).status_code == 404
        house(
            await a.post(f"/api/notebooks/{nb}/shares", json={"user": "nobody", "role": "viewer"}),
            404,
            "AUTH_005",
        )


async def test_b_streams_only_own_answers_over_sse(users: Users, alice: AliceWorld) -> None:
    async with httpx.AsyncClient(
        base_url=users.server.base, headers=bearer(users.b_key), timeout=120
    ) as b:
        conv = (await b.post("/api/chat/conversations", json={})).json()
        # B's own default notebook was made for B: not A's, and empty.
        assert conv["notebook_id"] != alice.notebook
        async with b.stream(
            "POST", f"/api/chat/stream/{conv['id']}", json={"message": "hello", "max_tokens": 4}
        ) as stream:
            assert stream.status_code == 200
            kinds = [
                line[6:].strip() async for line in stream.aiter_lines() if line.startswith("event:")
            ]
        assert kinds[0] == "start" and kinds[-1] in ("done", "error")
        res = await b.get(f"/api/chat/stream/{alice.conversation}")
        assert res.status_code == 404


# --- first start ----------------------------------------------------------------------------
def test_first_start_without_users_offers_a_one_time_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = multi_user_settings(tmp_path / "fresh")
    with run_server(settings, ingest=False, with_chat=False) as server:
        token = server.app.state.setup_token
        assert token
        printed = capsys.readouterr().err
        assert f"/#/setup/{token}" in printed
        with httpx.Client(base_url=server.base, timeout=60, headers={"Origin": server.base}) as web:
            body = {"name": "teacher", "password": "teacher-password", "token": "wrong"}
            house(web.post("/api/auth/setup", json=body), 403, "AUTH_007")
            res = web.post("/api/auth/setup", json={**body, "token": token})
            assert res.status_code == 201, res.text
            assert res.json()["is_admin"] is True
            assert web.get("/api/auth/me").json()["user"]["name"] == "teacher"
            # The local owner's default notebook is the first admin's now.
            assert len(web.get("/api/notebooks").json()["items"]) == 1
            again = web.post("/api/auth/setup", json={**body, "name": "second", "token": token})
            house(again, 403, "AUTH_007")


def test_local_mode_on_an_open_address_warns_in_health(tmp_path: Path) -> None:
    warning = resolve_mode("local", "0.0.0.0")[1]
    assert warning is not None
    settings = server_settings(tmp_path / "open")
    settings.auth = AuthSettings(mode="local")
    with run_server(settings, ingest=False, with_chat=False, host="0.0.0.0") as server:
        health = httpx.get(f"{server.base}/health", timeout=30).json()
        assert health["auth"] == {"mode": "local", "warning": warning}
        # Local mode: no login, as today.
        assert httpx.get(f"{server.base}/api/notebooks", timeout=30).status_code == 200


def test_an_import_belongs_to_its_importer(users: Users, alice: AliceWorld) -> None:
    with client(users, users.a_key) as a, client(users, users.c_key) as c:
        archive = a.get(f"/api/notebooks/{alice.notebook}/export")
        assert archive.status_code == 200
        accepted = c.post(
            "/api/notebooks/import",
            files={"file": ("alice.zip", archive.content, "application/zip")},
        )
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["job_id"]
        assert a.get(f"/api/jobs/{job}").status_code == 404
        assert wait_job(c, job)["status"] == "completed"
        mine = {n["id"]: n for n in c.get("/api/notebooks").json()["items"]}
        restored = [n for n in mine.values() if n["name"].startswith("Alice biology")]
        assert len(restored) == 1, mine
        copy = restored[0]["id"]
        assert copy != alice.notebook
        assert copy not in {n["id"] for n in a.get("/api/notebooks").json()["items"]}
        # Its conversations (A's, as exported by A) are carol's now, not A's.
        convs = c.get("/api/chat/conversations", params={"notebook_id": copy}).json()["items"]
        assert convs
        for conv in convs:
            assert a.get(f"/api/chat/conversations/{conv['id']}").status_code == 404


def test_the_message_limit_counts_per_user_not_per_address(tmp_path: Path) -> None:
    settings = multi_user_settings(tmp_path / "limited")
    settings.api.rate_limit_per_minute = 1
    keys = asyncio.run(_make_users(settings))
    with run_server(settings, ingest=False) as server:
        ask = {"message": "Say hi.", "max_tokens": 1}
        with (
            httpx.Client(base_url=server.base, headers=bearer(keys["b"]), timeout=120) as b,
            httpx.Client(base_url=server.base, headers=bearer(keys["a"]), timeout=120) as a,
        ):
            assert b.post("/api/chat/message", json=ask).status_code == 200
            refused = b.post("/api/chat/message", json=ask)
            house(refused, 429, "RATE_001")
            assert int(refused.headers["retry-after"]) >= 1
            # Same address (127.0.0.1), another user: a budget of its own.
            assert a.post("/api/chat/message", json=ask).status_code == 200
        # Password guessing is slowed: past 20 attempts from one address, RATE_003.
        with httpx.Client(base_url=server.base, timeout=60) as web:
            wrong = {"name": "alice", "password": "guess-guess"}
            answers = [web.post("/api/auth/login", json=wrong) for _ in range(21)]
            assert {r.status_code for r in answers[:20]} == {401}
            throttled = house(answers[20], 429, "RATE_003")
            assert throttled["details"]["limit"] == 20
            assert int(answers[20].headers["retry-after"]) >= 1
            right = web.post("/api/auth/login", json={"name": "alice", "password": PASSWORD_A})
            house(right, 429, "RATE_003")  # even the right password waits


async def test_taking_a_share_away_closes_that_users_notebook_socket(
    users: Users, alice: AliceWorld
) -> None:
    nb = alice.notebook
    url = f"ws://127.0.0.1:{users.server.port}/ws/notebooks/{nb}"
    async with httpx.AsyncClient(
        base_url=users.server.base, headers=bearer(users.a_key), timeout=120
    ) as a:
        shared = await a.post(
            f"/api/notebooks/{nb}/shares", json={"user": "carol", "role": "viewer"}
        )
        assert shared.status_code == 201
        async with (
            websockets.connect(url, additional_headers=bearer(users.c_key)) as carol,
            websockets.connect(url, additional_headers=bearer(users.a_key)) as owner,
        ):
            assert json.loads(await asyncio.wait_for(carol.recv(), 30))["type"] == "ready"
            assert json.loads(await asyncio.wait_for(owner.recv(), 30))["type"] == "ready"
            removed = await a.request(
                "DELETE", f"/api/notebooks/{nb}/shares", json={"user": "carol"}
            )
            assert removed.status_code == 200
            frame = json.loads(await asyncio.wait_for(carol.recv(), 30))
            assert frame["type"] == "error" and frame["error_code"] == "NB_001"
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(carol.recv(), 30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
            # The owner's socket stays, and gets what happens next.
            made = await a.post(
                "/api/chat/conversations", json={"notebook_id": nb, "title": "after"}
            )
            assert made.status_code == 201
            event = json.loads(await asyncio.wait_for(owner.recv(), 30))
            assert event["conversation"]["id"] == made.json()["id"]


def test_notebook_names_are_unique_per_owner_and_resolve_own_first(users: Users) -> None:
    name = "Genetics 101"
    with (
        client(users, users.a_key) as a,
        client(users, users.b_key) as b,
        client(users, users.c_key) as c,
    ):
        made = a.post("/api/notebooks", json={"name": name})
        assert made.status_code == 201, made.text
        a_nb = made.json()["id"]
        # Another user may take the same name; its owner may not, whatever the case.
        made = b.post("/api/notebooks", json={"name": "genetics  101"})
        assert made.status_code == 201, made.text
        b_nb = made.json()["id"]
        house(a.post("/api/notebooks", json={"name": "GENETICS 101"}), 409, "NB_002")
        other = a.post("/api/notebooks", json={"name": "Genetics 102"}).json()["id"]
        house(a.put(f"/api/notebooks/{other}", json={"name": name}), 409, "NB_002")

        def ref(http: httpx.Client, value: str) -> httpx.Response:
            return http.get("/api/notebooks", params={"ref": value})

        # A name resolves to the caller's own notebook, even when another is shared with it.
        shared = a.post(f"/api/notebooks/{a_nb}/shares", json={"user": "bob", "role": "viewer"})
        assert shared.status_code == 201, shared.text
        assert [n["id"] for n in ref(a, name).json()["items"]] == [a_nb]
        assert [n["id"] for n in ref(b, name).json()["items"]] == [b_nb]
        found = b.post("/api/search", json={"query": "genes", "notebook_id": name})
        assert found.json().get("error_code") != "NB_001", found.text  # bob's own (empty)
        # Carol sees no notebook of that name: the same 404 as for one that does not exist.
        house(ref(c, name), 404, "NB_001")
        house(c.post("/api/search", json={"query": "genes", "notebook_id": name}), 404, "NB_001")
        # Shared with her by both: ambiguous, said so with both ids; by id it works.
        for http, nb in ((a, a_nb), (b, b_nb)):
            r = http.post(f"/api/notebooks/{nb}/shares", json={"user": "carol", "role": "viewer"})
            assert r.status_code == 201, r.text

        # On /v1 every model id reaches its notebook: the shadowed or ambiguous name by id.
        def models(http: httpx.Client) -> dict[str, str]:
            listed = http.get("/v1/models").json()["data"]
            return {m["notebook_id"]: m["id"] for m in listed if m["notebook_id"] in (a_nb, b_nb)}

        assert models(b) == {b_nb: "studyrag/genetics 101", a_nb: f"studyrag/{a_nb}"}
        assert models(c) == {b_nb: f"studyrag/{b_nb}", a_nb: f"studyrag/{a_nb}"}
        for notebook_id, model in models(c).items():
            assert c.get(f"/v1/models/{model}").json()["notebook_id"] == notebook_id
        body = house(ref(c, name), 400, "NB_011")
        assert {x["id"] for x in body["details"]["candidates"]} == {a_nb, b_nb}
        assert {x["owner"] for x in body["details"]["candidates"]} == {"alice", "bob"}
        assert a_nb in body["message"] and b_nb in body["message"]
        house(c.post("/api/chat/conversations", json={"notebook_id": name}), 400, "NB_011")
        assert [n["id"] for n in ref(c, a_nb).json()["items"]] == [a_nb]
        # An import keeps its name when only other users have it; carol's own comes first.
        archive = a.get(f"/api/notebooks/{a_nb}/export")
        assert archive.status_code == 200, archive.text
        names = []
        for _ in range(2):
            accepted = c.post(
                "/api/notebooks/import",
                files={"file": ("genetics.zip", archive.content, "application/zip")},
            )
            assert accepted.status_code == 202, accepted.text
            job = wait_job(c, accepted.json()["job_id"])
            assert job["status"] == "completed", job
            names.append(job["metadata"]["notebook_name"])
            if len(names) == 1:
                own = ref(c, name).json()["items"]
                assert [n["id"] for n in own] == [job["metadata"]["notebook_id"]]
        assert names == [name, f"{name} (2)"]
        # The list says which notebook the caller's requests without one use.
        listed = c.get("/api/notebooks").json()
        own = {n["id"] for n in listed["items"]} - {a_nb, b_nb}
        assert listed["default_id"] in own, listed
        for http, nb in ((a, a_nb), (b, b_nb)):
            http.request("DELETE", f"/api/notebooks/{nb}/shares", json={"user": "carol"})
        a.request("DELETE", f"/api/notebooks/{a_nb}/shares", json={"user": "bob"})
