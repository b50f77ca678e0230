"""Per-user quotas over HTTP on a real multi-user server: files per day (RATE_004, 429 with
Retry-After) and storage of originals (RATE_005, 413). A refused upload stores nothing: no
document row, no original, nothing left in files/.incoming/."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from studyrag.config import AuthSettings
from tests.api.conftest import LiveServer, run_server, server_settings

pytestmark = pytest.mark.slow

PER_DAY = 3
QUOTA_KB = 64


@dataclass
class Quotas:
    server: LiveServer
    keys: dict[str, str]

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base,
            headers={"Authorization": f"Bearer {self.keys[user]}"},
            timeout=120,
        )


async def _make_users(settings: Any, names: list[str]) -> dict[str, str]:
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
        made = {}
        for i, name in enumerate(names):
            user = await users.create(name, f"{name}-password-123", is_admin=i == 0)
            made[name] = (await keys.create(user, name=name, scopes=["read", "chat", "admin"])).key
        return made
    finally:
        await db.aclose()


@pytest.fixture(scope="module")
def quotas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quotas]:
    settings = server_settings(
        tmp_path_factory.mktemp("quotas"),
        uploads_per_day=PER_DAY,
        storage_quota_mb=QUOTA_KB / 1024,
    )
    settings.auth = AuthSettings(mode="multi-user")
    keys = asyncio.run(_make_users(settings, ["alice", "bob", "carol"]))
    with run_server(settings, ingest=False, with_chat=False) as server:
        yield Quotas(server, keys)


def _text(kb: float) -> bytes:
    """Unique text of about `kb` KiB (originals are content-addressed)."""
    line = f"Notes {uuid.uuid4().hex}: chlorophyll absorbs red and blue light.\n".encode()
    return (line * (int(kb * 1024) // len(line) + 1))[: int(kb * 1024)]


def _files(*sizes_kb: float) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"n{i}.txt", _text(kb), "text/plain")) for i, kb in enumerate(sizes_kb)]


def _stored(server: LiveServer) -> set[Path]:
    """Every file under the data directory's files/ (originals and partial uploads)."""
    root = server.settings.data_dir / "files"
    return {p for p in root.rglob("*") if p.is_file()}


def _documents(http: httpx.Client, notebook_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/api/notebooks/{notebook_id}/documents")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _notebook(http: httpx.Client) -> str:
    response = http.post("/api/notebooks", json={"name": f"nb-{uuid.uuid4().hex[:8]}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error_code"] == code, body
    assert set(body) == {"error_code", "message", "details", "request_id"}
    return body


def test_files_per_day_are_counted_per_user_and_a_refused_upload_stores_nothing(
    quotas: Quotas,
) -> None:
    with quotas.client("bob") as bob, quotas.client("carol") as carol:
        nb = _notebook(bob)
        first = bob.post(f"/api/notebooks/{nb}/documents", files=_files(1, 1))
        assert first.status_code == 202, first.text
        assert [d["status"] for d in first.json()["documents"]] == ["queued", "queued"]

        # The third file of the day is kept, the fourth (same request) is refused alone.
        second = bob.post(f"/api/notebooks/{nb}/documents", files=_files(1, 1))
        assert second.status_code == 202, second.text
        kept, refused = second.json()["documents"]
        assert kept["status"] == "queued"
        assert refused["status"] == "rejected" and refused["error_code"] == "RATE_004"
        assert len(_documents(bob, nb)) == 3

        before = _stored(quotas.server)
        for attempt in (
            bob.post(f"/api/notebooks/{nb}/documents", files=_files(1)),
            bob.post(f"/api/documents?notebook_id={nb}", files={"file": ("x.txt", _text(1))}),
        ):
            body = _refused(attempt, 429, "RATE_004")
            assert 23 * 3600 < int(attempt.headers["retry-after"]) <= 24 * 3600
            assert body["details"]["limit"] == PER_DAY
            assert "STUDYRAG_API__UPLOADS_PER_DAY" in body["details"]["hint"]
        assert len(_documents(bob, nb)) == 3, "nothing of the refused uploads was recorded"
        assert _stored(quotas.server) == before, "nor stored"

        # Another user's day is their own.
        other = carol.post(f"/api/notebooks/{_notebook(carol)}/documents", files=_files(1))
        assert other.status_code == 202, other.text


def test_storage_quota_is_the_notebook_owners_and_is_checked_while_the_body_streams(
    quotas: Quotas,
) -> None:
    with quotas.client("alice") as alice:
        nb = _notebook(alice)
        ok = alice.post(f"/api/notebooks/{nb}/documents", files=_files(40))
        assert ok.status_code == 202, ok.text
        assert ok.json()["documents"][0]["status"] == "queued"
        before = _stored(quotas.server)

        # 40 KiB more passes the 64 KiB quota only once its bytes arrive: refused mid-stream.
        over = alice.post(f"/api/notebooks/{nb}/documents", files=_files(40))
        body = _refused(over, 413, "RATE_005")
        assert body["details"]["used_bytes"] == 40 * 1024
        assert body["details"]["limit_bytes"] == QUOTA_KB * 1024
        assert "Delete documents" in body["details"]["hint"]
        # A body declared larger than what is left is refused before it is read.
        declared = alice.post(f"/api/documents?notebook_id={nb}", files={"file": _files(300)[0][1]})
        _refused(declared, 413, "RATE_005")

        assert [d["size"] for d in _documents(alice, nb)] == [40 * 1024]
        assert _stored(quotas.server) == before, "no original, no partial copy"

        # An editor's upload into a shared notebook uses the owner's storage, not theirs.
        shared = alice.post(f"/api/notebooks/{nb}/shares", json={"user": "carol", "role": "editor"})
        assert shared.status_code in (200, 201), shared.text
        with quotas.client("carol") as carol:
            into_alices = carol.post(f"/api/notebooks/{nb}/documents", files=_files(40))
            assert _refused(into_alices, 413, "RATE_005")["details"]["used_bytes"] == 40 * 1024
            own = carol.post(f"/api/notebooks/{_notebook(carol)}/documents", files=_files(40))
            assert own.status_code == 202, own.text
        assert _stored(quotas.server) - before, "carol's own upload was stored"
