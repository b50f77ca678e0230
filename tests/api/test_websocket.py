"""/ws/chat over real sockets with real `websockets` clients and the real SmolLM2 model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.api.conftest import (
    QUESTION,
    SHORT,
    LiveServer,
    WSClient,
    chunks,
    new_conversation,
    ws_client,
)

pytestmark = pytest.mark.slow

LONG_QUESTION = (
    "Explain in detail, step by step, how photosynthesis works in plant cells, what "
    "chlorophyll does, and how mitochondria use the glucose."
)


def ask(content: str = QUESTION, max_tokens: int = SHORT, **options: Any) -> dict[str, Any]:
    return {"type": "message", "content": content, "max_tokens": max_tokens, **options}


def answer_shape(frames: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What every client must see identically: types, seqs and deltas, in order."""
    out: list[tuple[Any, ...]] = []
    for f in frames:
        if f["type"] == "stream_chunk":
            out.append(("chunk", f["seq"], f["delta"]))
        elif f["type"] in ("user_message", "stream_end"):
            out.append((f["type"], f["message"]["id"], f["message"]["content"]))
        elif f["type"] in ("stream_start", "sources"):
            out.append((f["type"], f["message_id"]))
    return out


def assert_contiguous(seqs: list[int], start: int = 1) -> None:
    assert seqs == list(range(start, start + len(seqs))), seqs


async def test_three_clients_receive_identical_ordered_streams(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with (
        ws_client(live, cid) as a,
        ws_client(live, cid) as b,
        ws_client(live, cid) as c,
    ):
        await a.send(ask())
        streams = [await client.stream() for client in (a, b, c)]
        for client in (a, b, c):
            await client.until("conversation_updated")
    shapes = [answer_shape(s) for s in streams]
    assert shapes[0] == shapes[1] == shapes[2]
    types = [f["type"] for f in streams[0] if f["type"] != "ping"]
    assert types[:3] == ["user_message", "stream_start", "sources"]
    assert types[-1] == "stream_end"
    seqs = [seq for seq, _ in chunks(streams[0])]
    assert seqs, "the model produced tokens"
    assert_contiguous(seqs)
    end = streams[0][-1]
    start = next(f for f in streams[0] if f["type"] == "stream_start")
    assert end["message"]["id"] == start["message_id"]
    assert end["message"]["status"] == "complete"
    assert end["metadata"]["stats"]["completion_tokens"] == len(seqs)
    stored = (await http.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
    assert [m["id"] for m in stored] == [streams[0][0]["message"]["id"], start["message_id"]]


async def test_typing_is_not_echoed_to_its_sender(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as a, ws_client(live, cid) as b, ws_client(live, cid) as c:
        await a.send({"type": "typing", "is_typing": True})
        for other in (b, c):
            typing = await other.until("typing")
            assert typing == {"type": "typing", "client_id": a.client_id, "is_typing": True}
        # B and C got it, so A's copy (if any) would already be queued before this pong.
        await a.send({"type": "ping"})
        assert (await a.until("pong"))["type"] == "pong"
        assert a.of("typing") == []
        await b.send({"type": "typing", "is_typing": False})
        typing = await a.until("typing")
        assert typing == {"type": "typing", "client_id": b.client_id, "is_typing": False}


async def test_stop_mid_stream_stores_an_incomplete_answer(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as a, ws_client(live, cid) as b:
        await a.send(ask(LONG_QUESTION, max_tokens=160))
        await a.until("stream_chunk")
        await a.send({"type": "stop"})
        frames = await a.stream()
        others = await b.stream()
    end = frames[-1]
    assert end["type"] == "stream_end"
    assert end["message"]["status"] == "incomplete"
    assert end["metadata"]["stopped"] is True
    assert end["metadata"]["stats"]["finish_reason"] == "cancelled"
    streamed = chunks(a.frames)
    assert 1 <= len(streamed) < 160
    assert answer_shape(others)[-1] == answer_shape(frames)[-1]
    stored = (await http.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
    assert stored[-1]["id"] == end["message"]["id"]
    assert stored[-1]["status"] == "incomplete"
    assert stored[-1]["content"] == end["message"]["content"]
    assert stored[-1]["content"].strip(), "the partial text is kept"
    # The conversation is free again.
    state = (await http.get(f"/api/chat/conversations/{cid}")).json()
    assert state["generation"] is None


async def test_disconnect_then_resume_without_loss_or_duplicates(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as watcher:
        async with ws_client(live, cid) as a:
            await a.send(ask(LONG_QUESTION, max_tokens=80))
            start = await a.until("stream_start")
            for _ in range(3):
                await a.until("stream_chunk")
        before = chunks(a.frames)
        last_seq = before[-1][0]
        # Reconnect while the answer goes on (it does not depend on any client).
        async with ws_client(live, cid) as again:
            await again.send(
                {"type": "resume", "message_id": start["message_id"], "last_seq": last_seq}
            )
            rest = await again.stream()
        reference = await watcher.stream()
    after = chunks(rest)
    combined = before + after
    assert_contiguous([seq for seq, _ in combined])
    assert combined == chunks(reference), "same tokens, none lost or repeated"
    assert rest[-1]["type"] == "stream_end"
    assert rest[-1]["message"]["id"] == start["message_id"]


async def test_client_joining_mid_stream_gets_it_from_the_current_point(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as a:
        await a.send(ask(LONG_QUESTION, max_tokens=120))
        await a.until("stream_chunk")
        await a.until("stream_chunk")
        async with websockets.connect(live.ws_url(cid)) as raw:
            late = WSClient(raw)
            hello = await late.recv()
            assert hello["type"] == "connected"
            late_frames = await late.stream()
        await a.stream()
    if hello["generation"] is None:
        pytest.fail("the answer ended before the late client joined; lengthen it")
    assert hello["generation"]["message_id"] == late_frames[-1]["message"]["id"]
    got = chunks(late_frames)
    all_chunks = chunks(a.frames)
    assert got, "live tokens reach the late joiner"
    assert_contiguous([seq for seq, _ in got], start=got[0][0])
    assert got[0][0] > 1
    assert got == all_chunks[got[0][0] - 1 :]


async def test_resume_just_after_the_end_replays_the_rest(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as a:
        await a.send(ask(max_tokens=8))
        frames = await a.stream()
    start = next(f for f in frames if f["type"] == "stream_start")
    async with ws_client(live, cid) as b:
        await b.send({"type": "resume", "message_id": start["message_id"], "last_seq": 2})
        replay = await b.stream()
        await b.send({"type": "resume", "message_id": "unknown", "last_seq": 0})
        error = await b.until("error")
    assert chunks(replay) == chunks(frames)[2:]
    assert replay[-1] == frames[-1]
    assert error["error_code"] == "CHAT_008"


async def test_rest_changes_are_pushed_to_websocket_clients(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as a:
        renamed = await http.put(f"/api/chat/conversations/{cid}", json={"title": "From REST"})
        assert renamed.status_code == 200
        update = await a.until("conversation_updated")
        assert update["conversation"]["title"] == "From REST"

        answer = await http.post(
            "/api/chat/message",
            json={"message": QUESTION, "conversation_id": cid, "max_tokens": 6},
        )
        assert answer.status_code == 200, answer.text
        frames = await a.stream()
        assert frames[0]["type"] == "user_message"
        assert frames[-1]["message"]["id"] == answer.json()["message"]["id"]
        assert (await a.until("conversation_updated"))["conversation"]["message_count"] == 2

        assert (await http.delete(f"/api/chat/conversations/{cid}")).status_code == 200
        deleted = await a.until("conversation_deleted")
        assert deleted == {"type": "conversation_deleted", "conversation_id": cid}
        with pytest.raises(ConnectionClosed) as closed:
            await a.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_malformed_frames_get_an_error_and_the_connection_stays_open(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    big = live.settings.api.ws_max_frame_bytes + 1
    cases: list[tuple[str | dict[str, Any], str]] = [
        ("this is not json", "CHAT_009"),
        ("[1, 2, 3]", "CHAT_009"),
        ({"no": "type"}, "CHAT_009"),
        ({"type": "dance"}, "CHAT_009"),
        (json.dumps({"type": "ping", "pad": "x" * big}), "CHAT_010"),
        ({"type": "message", "content": "   "}, "CHAT_006"),
        ({"type": "message"}, "CHAT_006"),
        ({"type": "message", "content": "hi", "top_k": 0}, "CHAT_006"),
        ({"type": "typing", "is_typing": "maybe"}, "CHAT_006"),
        ({"type": "resume", "message_id": "x", "last_seq": -1}, "CHAT_006"),
        ({"type": "stop"}, "CHAT_008"),
    ]
    async with ws_client(live, cid) as a:
        for frame, code in cases:
            await a.send(frame)
            error = await a.until("error")
            assert error["error_code"] == code, (frame if isinstance(frame, dict) else "", error)
            assert set(error) >= {"error_code", "message", "details", "request_id"}
        await a.send({"type": "ping"})
        assert (await a.until("pong"))["type"] == "pong"


async def test_unknown_conversation_gets_an_error_frame_then_4404(live: LiveServer) -> None:
    async with websockets.connect(live.ws_url("no-such-conversation")) as raw:
        error = json.loads(await raw.recv())
        assert error["type"] == "error" and error["error_code"] == "CHAT_005"
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_second_message_while_answering_is_refused(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(live, cid) as a:
        await a.send(ask(LONG_QUESTION, max_tokens=60))
        await a.until("stream_start")
        await a.send(ask())
        error = await a.until("error")
        assert error["error_code"] == "CHAT_007"
        busy = await http.post(
            "/api/chat/message", json={"message": QUESTION, "conversation_id": cid}
        )
        assert busy.status_code == 409 and busy.json()["error_code"] == "CHAT_007"
        await a.until("stream_end")


async def test_dead_clients_are_removed(live: LiveServer, http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)

    async def count() -> int:
        stats = (await http.get("/api/chat/stats")).json()["websocket"]
        return int(stats["clients_per_conversation"].get(cid, 0))

    connection = await websockets.connect(live.ws_url(cid), user_agent_header="dead-test/1.0")
    hello = json.loads(await connection.recv())
    assert hello["type"] == "connected"
    assert await count() == 1
    listed = (await http.get("/api/chat/stats", params={"clients": True})).json()
    mine = [c for c in listed["websocket"]["clients"] if c["client_id"] == hello["client_id"]]
    assert len(mine) == 1 and mine[0]["conversation_id"] == cid
    assert mine[0]["user_agent"] == "dead-test/1.0"
    assert mine[0]["connected_at"] and mine[0]["last_seen"]
    connection.transport.abort()  # gone without a closing handshake
    for _ in range(100):
        if await count() == 0:
            break
        await asyncio.sleep(0.05)
    assert await count() == 0
