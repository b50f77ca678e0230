"""POST (ask) and GET (attach) /api/chat/stream over a real socket, with the real SmolLM2."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.api.conftest import QUESTION, SHORT, SSEEvent, new_conversation, sse_events

pytestmark = pytest.mark.slow

LONG_QUESTION = "Explain in detail how photosynthesis and cellular respiration work in plants."


def stream_url(cid: str) -> str:
    return f"/api/chat/stream/{cid}"


async def read_all(
    http: httpx.AsyncClient,
    cid: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> list[SSEEvent]:
    async with http.stream("GET", stream_url(cid), params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e async for e in sse_events(response)]


async def ask_all(http: httpx.AsyncClient, cid: str, body: dict[str, Any]) -> list[SSEEvent]:
    """Ask (POST) and read the whole answer."""
    async with http.stream("POST", stream_url(cid), json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e async for e in sse_events(response)]


def tokens(events: list[SSEEvent]) -> list[tuple[int, str]]:
    return [(e.data["seq"], e.data["delta"]) for e in events if e.event == "token"]


def ids(events: list[SSEEvent]) -> list[int]:
    """The event numbers, after checking every id is `<generation id>:<n>` of one answer."""
    split = [(e.id or "").rpartition(":") for e in events]
    assert len({prefix for prefix, _, _ in split}) == 1, [e.id for e in events]
    assert all(len(prefix) == 32 and sep == ":" for prefix, sep, _ in split), split
    return [int(n) for _, _, n in split]


async def test_events_in_order_with_ids(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    events = await ask_all(http, cid, {"message": QUESTION, "max_tokens": SHORT})
    names = [e.event for e in events]
    assert names[:2] == ["start", "sources"] and names[-1] == "done"
    assert set(names[2:-1]) == {"token"}
    assert ids(events) == list(range(1, len(events) + 1))
    start, done = events[0].data, events[-1].data
    assert start["conversation_id"] == cid and start["message_id"]
    assert [seq for seq, _ in tokens(events)] == list(range(1, len(tokens(events)) + 1))
    assert done["message"]["id"] == start["message_id"]
    assert done["message"]["status"] == "complete"
    assert done["metadata"]["stats"]["completion_tokens"] == len(tokens(events))
    assert events[1].data["sources"], "the notes are relevant"


async def test_last_event_id_replays_exactly_what_was_missed(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    params = {"message": LONG_QUESTION, "max_tokens": 60}
    first: list[SSEEvent] = []
    async with http.stream("POST", stream_url(cid), json=params) as response:
        async for event in sse_events(response, limit=6):
            first.append(event)
    # A reconnect of the former protocol: GET, message included, plus Last-Event-ID.
    rest = await read_all(http, cid, params, headers={"Last-Event-ID": first[-1].id or ""})
    combined = first + rest
    assert ids(combined) == list(range(1, len(combined) + 1)), "no loss, no duplicates"
    assert combined[-1].event == "done"
    assert [seq for seq, _ in tokens(combined)] == list(range(1, len(tokens(combined)) + 1))
    conversation = (await http.get(f"/api/chat/conversations/{cid}")).json()
    assert conversation["message_count"] == 2, "the reconnect did not ask again"


async def test_attach_without_message_and_nothing_to_attach_to(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    nothing = await read_all(http, cid)
    assert [e.event for e in nothing] == ["error"]
    assert nothing[0].data["error_code"] == "CHAT_008"

    params = {"message": LONG_QUESTION, "max_tokens": 40}
    async with http.stream("POST", stream_url(cid), json=params) as response:
        events = sse_events(response)
        opening = await anext(events)
        assert opening.event == "start"
        attached = await read_all(http, cid)
        owner = [opening] + [e async for e in events]
    assert [(e.id, e.event, e.data) for e in attached] == [(e.id, e.event, e.data) for e in owner]


async def test_last_event_id_of_an_earlier_answer_replays_the_current_one_whole(
    http: httpx.AsyncClient,
) -> None:
    # Event numbers restart at 1 in every answer: a browser that reconnects with the id of
    # answer A while answer B runs must get B from its start, not B minus its first events.
    cid = await new_conversation(http)
    answer_a = await ask_all(http, cid, {"message": QUESTION, "max_tokens": SHORT})
    assert answer_a[-1].event == "done"
    params = {"message": LONG_QUESTION, "max_tokens": 40}
    async with http.stream("POST", stream_url(cid), json=params) as response:
        events = sse_events(response)
        opening = await anext(events)
        assert opening.event == "start"
        reconnected = await read_all(
            http, cid, params, headers={"Last-Event-ID": answer_a[-1].id or ""}
        )
        answer_b = [opening] + [e async for e in events]
    assert reconnected[0].event == "start"
    assert [(e.id, e.event, e.data) for e in reconnected] == [
        (e.id, e.event, e.data) for e in answer_b
    ]
    assert ids(answer_b) == list(range(1, len(answer_b) + 1))
    assert answer_a[0].id != answer_b[0].id, "ids differ between answers"
    # A bare number (the former id format) names no answer: the current one comes whole.
    legacy = await read_all(http, cid, params={"last_event_id": "3"})
    assert [(e.id, e.event) for e in legacy] == [(e.id, e.event) for e in answer_b]
    conversation = (await http.get(f"/api/chat/conversations/{cid}")).json()
    assert conversation["message_count"] == 4, "no reconnect asked again"


async def test_second_question_while_streaming_is_409(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    params = {"message": LONG_QUESTION, "max_tokens": 40}
    async with http.stream("POST", stream_url(cid), json=params) as response:
        events = sse_events(response)
        assert (await anext(events)).event == "start"
        busy = await http.post(stream_url(cid), json={"message": QUESTION})
        assert busy.status_code == 409
        assert busy.json()["error_code"] == "CHAT_007"
        assert [e async for e in events][-1].event == "done"


async def test_disconnect_does_not_lose_the_answer(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    params = {"message": LONG_QUESTION, "max_tokens": 40}
    async with http.stream("POST", stream_url(cid), json=params) as response:
        seen = [e async for e in sse_events(response, limit=3)]
    assert seen[-1].event == "token"
    message_id = seen[0].data["message_id"]
    for _ in range(600):
        items = (await http.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
        if items[-1]["status"] != "incomplete":
            break
        await asyncio.sleep(0.05)
    assert items[-1]["id"] == message_id
    assert items[-1]["status"] == "complete"
    assert items[-1]["content"].strip()


async def test_stream_errors_before_streaming_use_the_error_shape(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.post(stream_url("nope"), json={"message": QUESTION})
    assert missing.status_code == 404 and missing.json()["error_code"] == "CHAT_005"
    cid = await new_conversation(http)
    empty = await http.post(stream_url(cid), json={"message": "  "})
    assert empty.status_code == 422 and empty.json()["error_code"] == "CHAT_006"
    for bad_id in ("abc", "-1", ":3", "ab:cd"):
        bad = await http.get(stream_url(cid), headers={"Last-Event-ID": bad_id})
        assert bad.status_code == 422 and bad.json()["error_code"] == "CHAT_006", bad_id


async def test_a_get_never_starts_an_answer(http: httpx.AsyncClient) -> None:
    # Any web page, link or prefetch can send a GET: it must not write (issue 12).
    cid = await new_conversation(http)
    refused = await http.get(stream_url(cid), params={"message": QUESTION})
    assert refused.status_code == 422 and refused.json()["error_code"] == "CHAT_006"
    assert "POST" in refused.json()["details"]["hint"]
    conversation = (await http.get(f"/api/chat/conversations/{cid}")).json()
    assert conversation["message_count"] == 0
