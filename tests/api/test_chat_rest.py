"""The chat REST API over a real server: ask, conversations CRUD, paging, soft delete, errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from studyrag.chat.conversations import ConversationManager
from studyrag.db.session import Database
from tests.api.conftest import QUESTION, SHORT, LiveServer, new_conversation, ws_client

pytestmark = pytest.mark.slow

SOURCE_FIELDS = {
    "index",
    "document_id",
    "filename",
    "page",
    "section",
    "chunk_id",
    "score",
    "excerpt",
    "start",
    "end",
}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape, with no internals leaking."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error_code", "message", "details", "request_id"}, body
    assert body["error_code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", "site-packages", "/work/", '.py"', 'File "'):
        assert leak not in response.text, response.text
    return body


async def ask(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post(
        "/api/chat/message", json={"message": QUESTION, "max_tokens": SHORT} | body
    )


async def test_message_without_conversation_starts_one_with_sources_and_stats(
    http: httpx.AsyncClient,
) -> None:
    response = await ask(http)
    assert response.status_code == 200, response.text
    body = response.json()
    message, conversation = body["message"], body["conversation"]
    assert message["role"] == "assistant" and message["status"] == "complete"
    assert message["content"].strip()
    assert {"id", "content", "created_at", "status"} <= set(message)
    assert conversation["message_count"] == 2
    assert conversation["title"].startswith("Why do leaves look green")
    assert body["sources"], "the notes answer this question"
    for source in body["sources"]:
        assert SOURCE_FIELDS <= set(source)
        assert source["filename"] == "plants.md"
    meta = body["metadata"]
    assert meta["provider"] == "llamacpp" and meta["model"]
    assert meta["search_mode"] == "hybrid" and meta["retrieval_ms"] >= 0
    assert 1 <= meta["stats"]["completion_tokens"] <= SHORT

    again = await ask(http, conversation_id=conversation["id"], max_tokens=4)
    assert again.status_code == 200, again.text
    assert again.json()["conversation"]["message_count"] == 4
    page = (await http.get(f"/api/chat/conversations/{conversation['id']}/messages")).json()
    assert [m["role"] for m in page["items"]] == ["user", "assistant"] * 2
    assert [m["seq"] for m in page["items"]] == [1, 2, 3, 4]


async def test_unknown_or_deleted_conversation_is_404(http: httpx.AsyncClient) -> None:
    assert_error(await ask(http, conversation_id="nope"), 404, "CHAT_005")
    cid = await new_conversation(http)
    assert (await http.delete(f"/api/chat/conversations/{cid}")).status_code == 200
    assert_error(await ask(http, conversation_id=cid), 404, "CHAT_005")


async def test_invalid_requests_use_the_error_shape(
    http: httpx.AsyncClient, live: LiveServer
) -> None:
    limit = live.settings.chat.max_message_chars
    body = assert_error(await ask(http, message="   "), 422, "CHAT_006")
    assert body["details"]["field"] == "message"
    body = assert_error(await ask(http, message="x" * (limit + 1)), 422, "CHAT_006")
    assert body["details"]["limit"] == limit
    assert_error(await ask(http, message=""), 422, "CHAT_006")
    assert_error(await ask(http, top_k=0), 422, "CHAT_006")
    assert_error(await ask(http, search_mode="psychic"), 422, "CHAT_006")
    assert_error(await ask(http, surprise=True), 422, "CHAT_006")
    assert_error(await ask(http, template="NO_SUCH_TEMPLATE"), 422, "CHAT_006")
    huge = await http.post(
        "/api/chat/message",
        content=b'{"message": "' + b"y" * 200_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_error(huge, 413, "CHAT_010")
    not_json = await http.post(
        "/api/chat/message", content=b"{", headers={"content-type": "application/json"}
    )
    assert_error(not_json, 422, "CHAT_006")


async def test_conversation_crud_and_soft_delete(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/api/chat/conversations",
        json={"title": "Crud test", "metadata": {"course": "bio"}, "template": "RAG_BASIC"},
    )
    assert created.status_code == 201, created.text
    conv = created.json()
    assert conv["title"] == "Crud test" and conv["status"] == "active"
    assert conv["metadata"] == {"course": "bio", "template": "RAG_BASIC"}
    cid = conv["id"]
    assert_error(
        await http.post("/api/chat/conversations", json={"template": "NOPE"}), 422, "CHAT_006"
    )

    got = (await http.get(f"/api/chat/conversations/{cid}")).json()
    assert got["id"] == cid and got["generation"] is None

    updated = await http.put(
        f"/api/chat/conversations/{cid}",
        json={"title": "Renamed", "metadata": {"course": "chem"}, "status": "archived"},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["title"] == "Renamed"
    assert updated.json()["status"] == "archived"
    assert updated.json()["metadata"] == {"course": "chem"}
    assert_error(
        await http.put(f"/api/chat/conversations/{cid}", json={"status": "deleted"}),
        422,
        "CHAT_006",
    )
    archived = (await http.get("/api/chat/conversations", params={"status": "archived"})).json()
    assert cid in [c["id"] for c in archived["items"]]

    deleted = await http.delete(f"/api/chat/conversations/{cid}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": cid}
    assert_error(await http.get(f"/api/chat/conversations/{cid}"), 404, "CHAT_005")
    assert_error(
        await http.put(f"/api/chat/conversations/{cid}", json={"title": "x"}), 404, "CHAT_005"
    )
    assert_error(await http.delete(f"/api/chat/conversations/{cid}"), 404, "CHAT_005")
    assert_error(await http.get(f"/api/chat/conversations/{cid}/messages"), 404, "CHAT_005")
    listed = (await http.get("/api/chat/conversations", params={"limit": 100})).json()
    assert cid not in [c["id"] for c in listed["items"]]
    gone = (await http.get("/api/chat/conversations", params={"status": "deleted"})).json()
    assert cid in [c["id"] for c in gone["items"]]

    # Purging is only for deleted conversations, and is final.
    other = await new_conversation(http)
    assert_error(
        await http.post(f"/api/chat/conversations/{other}/cleanup", json={"purge": True}),
        422,
        "CHAT_006",
    )
    purged = await http.post(f"/api/chat/conversations/{cid}/cleanup", json={"purge": True})
    assert purged.status_code == 200 and purged.json()["conversations_purged"] == 1
    gone = (await http.get("/api/chat/conversations", params={"status": "deleted"})).json()
    assert cid not in [c["id"] for c in gone["items"]]


async def test_conversation_list_pagination_and_filters(http: httpx.AsyncClient) -> None:
    tag = f"page-{datetime.now(UTC).timestamp()}"
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [await new_conversation(http, f"{tag} {i}") for i in range(5)]
    seen: list[str] = []
    cursor = None
    cursors: list[str] = []
    sizes = []
    while True:
        params: dict[str, Any] = {"q": tag, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await http.get("/api/chat/conversations", params=params)).json()
        assert page["total"] == 5
        sizes.append(len(page["items"]))
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert sizes == [2, 2, 1]
    assert seen == list(reversed(ids)), "newest activity first, no duplicates or gaps"

    exact = (await http.get("/api/chat/conversations", params={"q": tag, "limit": 5})).json()
    assert len(exact["items"]) == 5 and exact["next_cursor"] is None
    window = {"q": tag, "created_after": before.isoformat(), "limit": 100}
    assert (await http.get("/api/chat/conversations", params=window)).json()["total"] == 5
    window = {"q": tag, "created_before": before.isoformat()}
    assert (await http.get("/api/chat/conversations", params=window)).json()["total"] == 0
    offset = (await http.get("/api/chat/conversations", params={"q": tag, "offset": 4})).json()
    assert [c["id"] for c in offset["items"]] == [ids[0]]

    for bad in ({"limit": 101}, {"limit": 0}, {"offset": -1}, {"cursor": "%%%"}):
        assert_error(await http.get("/api/chat/conversations", params=bad), 422, "CHAT_006")
    both = {"q": tag, "cursor": cursors[0], "offset": 1}
    assert_error(await http.get("/api/chat/conversations", params=both), 422, "CHAT_006")
    assert_error(
        await http.get("/api/chat/conversations", params={"status": "lost"}), 422, "CHAT_006"
    )


async def test_message_pagination_both_ways_and_cleanup(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    for _ in range(3):
        response = await ask(http, conversation_id=cid, max_tokens=3)
        assert response.status_code == 200, response.text
    url = f"/api/chat/conversations/{cid}/messages"

    async def page(**params: Any) -> dict[str, Any]:
        response = await http.get(url, params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def seqs(p: dict[str, Any]) -> list[int]:
        return [m["seq"] for m in p["items"]]

    first = await page(limit=2)
    assert seqs(first) == [1, 2] and not first["has_more_before"] and first["has_more_after"]
    middle = await page(limit=2, after_seq=first["last_seq"])
    assert seqs(middle) == [3, 4] and middle["has_more_before"] and middle["has_more_after"]
    last = await page(limit=2, after_seq=4)
    assert seqs(last) == [5, 6] and last["has_more_before"] and not last["has_more_after"]
    beyond = await page(limit=2, after_seq=6)
    assert seqs(beyond) == [] and beyond["has_more_before"] and not beyond["has_more_after"]
    newest = await page(limit=2, order="desc")
    assert seqs(newest) == [6, 5] and newest["has_more_before"]
    older = await page(limit=2, before_seq=5)
    assert seqs(older) == [3, 4] and older["has_more_before"] and older["has_more_after"]
    start = await page(limit=2, before_seq=1)
    assert seqs(start) == [] and start["has_more_after"] and not start["has_more_before"]
    everything = await page(limit=100)
    assert seqs(everything) == [1, 2, 3, 4, 5, 6]
    for bad in ({"limit": 101}, {"limit": 0}, {"order": "sideways"}, {"after_seq": -1}):
        assert_error(await http.get(url, params=bad), 422, "CHAT_006")

    stop = await http.post(f"/api/chat/conversations/{cid}/stop")
    assert stop.json() == {"stopped": False, "message": None}

    cleaned = await http.post(f"/api/chat/conversations/{cid}/cleanup", json={"keep_last": 2})
    assert cleaned.status_code == 200, cleaned.text
    assert cleaned.json()["messages_removed"] == 4
    assert cleaned.json()["conversation"]["message_count"] == 2
    assert seqs(await page()) == [5, 6]
    assert_error(
        await http.post(f"/api/chat/conversations/{cid}/cleanup", json={"keep_last": -1}),
        422,
        "CHAT_006",
    )


async def test_conversation_template_is_checked_where_it_is_set(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    # metadata.template is the default of every later answer: a bad one must be refused when
    # it is set, not break each message afterwards (422 for an unknown name, 500 for a list).
    cid = await new_conversation(http)
    url = f"/api/chat/conversations/{cid}"
    unknown = assert_error(
        await http.put(url, json={"metadata": {"template": "x"}}), 422, "CHAT_006"
    )
    assert "RAG_BASIC" in unknown["details"]["available"]
    assert "RAG_BASIC" in unknown["details"]["hint"]
    assert_error(await http.put(url, json={"metadata": {"template": ["x"]}}), 422, "CHAT_006")
    assert_error(
        await http.post("/api/chat/conversations", json={"metadata": {"template": ["x"]}}),
        422,
        "CHAT_006",
    )
    assert (await ask(http, conversation_id=cid, max_tokens=2)).status_code == 200
    kept = await http.put(url, json={"metadata": {"template": "RAG_BASIC", "note": "n"}})
    assert kept.status_code == 200, kept.text
    assert kept.json()["metadata"] == {"template": "RAG_BASIC", "note": "n"}

    # Stored before templates were checked: written straight to the database. A template
    # that is not a name is ignored, and the server's default template answers.
    db = Database(live.settings.database_url)
    try:
        await ConversationManager(db).update(cid, metadata={"template": ["x"]})
    finally:
        await db.aclose()
    legacy = await ask(http, conversation_id=cid, max_tokens=2)
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["metadata"]["template"] == live.settings.chat.template


async def test_stats_count_conversations_answers_and_errors(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    assert_error(await http.get("/api/chat/conversations/missing"), 404, "CHAT_005")
    response = await ask(http, max_tokens=4)
    assert response.status_code == 200
    stats = (await http.get("/api/chat/stats", params={"clients": True})).json()
    assert stats["conversations"]["by_status"]["active"] >= 1
    assert stats["messages"]["total"] >= 2
    assert stats["tokens_generated"] >= 1
    assert stats["response_time"]["count"] >= 1
    assert stats["response_time"]["p95_seconds"] > 0
    generations = stats["generations"]
    assert generations["in_flight"] == 0
    assert generations["errors_by_code"]["CHAT_005"] >= 1
    assert generations["response_time"]["count"] >= 1 and generations["tokens_generated"] >= 1

    cid = await new_conversation(http)
    async with ws_client(live, cid, user_agent_header="stats-test") as socket:
        during = (await http.get("/api/chat/stats", params={"clients": True})).json()["websocket"]
        assert during["connections"] >= 1
        assert during["clients_per_conversation"][cid] == 1
        [client] = [c for c in during["clients"] if c["conversation_id"] == cid]
        assert client["client_id"] == socket.client_id
        assert client["address"] == "127.0.0.1" and client["user_agent"] == "stats-test"
        assert {"connected_at", "last_seen", "queued"} <= set(client)
    # The server notices the close asynchronously.
    for _ in range(100):
        after = (await http.get("/api/chat/stats", params={"clients": True})).json()["websocket"]
        if cid not in after["clients_per_conversation"]:
            break
        await asyncio.sleep(0.05)
    assert cid not in after["clients_per_conversation"]
    assert not [c for c in after["clients"] if c["conversation_id"] == cid]
