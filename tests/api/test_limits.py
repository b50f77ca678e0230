"""Limits and keep-alives on a server with small settings: rate limits, client caps, pings,
and a slow client that must not hold up the others."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.api.conftest import (
    QUESTION,
    LiveServer,
    new_conversation,
    run_server,
    server_settings,
    ws_client,
)

pytestmark = pytest.mark.slow

RATE = 2
# Conversation updates this large fill a socket that is not read in a few dozen frames; they
# stay under the 64 KiB request body limit of these servers.
PADDING = "x" * 60_000


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Only the rate-limit test uses it: every client here shares one address, one budget."""
    settings = server_settings(tmp_path_factory.mktemp("rated"), rate_limit_per_minute=RATE)
    with run_server(settings, ingest=False) as server:
        yield server


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(
        tmp_path_factory.mktemp("tight"),
        ws_max_clients_per_conversation=2,
        ws_max_clients_per_address=4,
        ws_ping_interval=0.5,
        sse_ping_interval=0.3,
        ws_send_queue=16,
    )
    with run_server(settings) as server:
        yield server


@pytest.fixture
async def http(tight: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tight.base, timeout=120) as client:
        yield client


async def test_rate_limit_is_per_address_whatever_the_socket_or_client_id(
    rated: LiveServer,
) -> None:
    # One test on its own server: every client of a test run has the address 127.0.0.1, so
    # the budget spent here would be missing from any other test that sends a message.
    question = {"type": "message", "content": QUESTION, "max_tokens": 2}
    async with httpx.AsyncClient(base_url=rated.base, timeout=120) as http:
        cid = await new_conversation(http)
        async with ws_client(rated, cid) as a:
            for _ in range(RATE):
                await a.send(question)
                assert (await a.stream())[-1]["type"] == "stream_end"
            await a.send(question)
            error = await a.until("error")
            assert error["error_code"] == "RATE_001"
            assert 0 < error["retry_after"] <= 60
            assert error["details"]["retry_after"] == error["retry_after"]
            await a.send({"type": "ping"})
            assert (await a.until("pong"))["type"] == "pong", "still connected"

        # A new socket is a new client_id, not a new budget.
        async with ws_client(rated, cid) as b:
            await b.send(question)
            refused_frame = await b.recv()
            assert refused_frame["type"] == "error", refused_frame
            assert refused_frame["error_code"] == "RATE_001"

        # HTTP and SSE from the same address share it, and no header widens it.
        body = {"message": QUESTION, "conversation_id": cid, "max_tokens": 2}
        for headers in ({}, {"X-Client-ID": "another-tab"}, {"X-Client-ID": "a-third-tab"}):
            refused = await http.post("/api/chat/message", json=body, headers=headers)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error_code"] == "RATE_001"
            assert refused.json()["details"]["limit"] == RATE
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        sse = await http.post(
            f"/api/chat/stream/{cid}",
            json={"message": QUESTION},
            headers={"X-Client-ID": "a-fourth-tab"},
        )
        assert sse.status_code == 429 and sse.json()["error_code"] == "RATE_001"
        stored = (await http.get(f"/api/chat/conversations/{cid}")).json()
        assert stored["message_count"] == 2 * RATE, "no refused question was stored"


async def test_clients_per_conversation_and_per_address(
    tight: LiveServer, http: httpx.AsyncClient
) -> None:
    one, two, three = [await new_conversation(http) for _ in range(3)]

    async def refused(cid: str) -> str:
        async with websockets.connect(tight.ws_url(cid)) as extra:
            error = json.loads(await extra.recv())
            assert error["error_code"] == "RATE_002"
            with pytest.raises(ConnectionClosed) as closed:
                await extra.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            return str(error["message"])

    async with ws_client(tight, one), ws_client(tight, one):
        assert "conversation" in await refused(one)
        async with ws_client(tight, two), ws_client(tight, two):
            assert "address" in await refused(three)
        # Slots free up as soon as clients leave.
        async with ws_client(tight, three) as back:
            assert back.client_id


async def test_idle_websocket_is_pinged_and_sse_keeps_alive(
    tight: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(tight, cid) as a:
        ping = await a.until("ping", within=5)
        assert ping["ts"] > 0
    comments = 0
    params = {"message": "Explain photosynthesis in detail.", "max_tokens": 40}
    async with http.stream("POST", f"/api/chat/stream/{cid}", json=params) as response:
        async for line in response.aiter_lines():
            comments += line.startswith(":")
            if line.startswith("event: done"):
                break
    # Pings arrive every 0.3 s; the answer (and its retrieval) takes longer than that.
    assert comments >= 1


def raw_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket that completes the handshake and then never reads: the slowest client."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_slow_client_is_dropped_without_stalling_the_others(
    tight: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    slow = raw_websocket(tight.port, f"/ws/chat/{cid}")
    try:
        async with ws_client(tight, cid, max_size=None) as fast:
            # More than the server's socket send buffer (4 MiB at most) and queue can hold.
            updates = 160
            for i in range(updates):
                response = await http.put(
                    f"/api/chat/conversations/{cid}",
                    json={"title": f"t{i}", "metadata": {"pad": PADDING}},
                )
                assert response.status_code == 200
                frame = await fast.until("conversation_updated")
                assert frame["conversation"]["title"] == f"t{i}", "in order, none lost"
            stats = (await http.get("/api/chat/stats")).json()["websocket"]
            assert stats["clients_per_conversation"][cid] == 1, "the slow client was dropped"
            assert stats["slow_clients_dropped"] >= 1
            await fast.send({"type": "ping"})
            assert (await fast.until("pong"))["type"] == "pong"
    finally:
        slow.close()


def send_text_frame(sock: socket.socket, text: str) -> None:
    """One masked client text frame, as RFC 6455 requires of clients (short payloads only)."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


async def test_client_dropped_while_its_answer_starts_does_not_wedge_the_conversation(
    tight: LiveServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader of a client dropped for not reading is cancelled. If that happens while its
    # question's `start` is being published (a slow broker), the answer must still finish and
    # release the conversation; a wedged one refuses every later question with 409.
    cid = await new_conversation(http)
    runtime = tight.app.state.chat_runtime
    append = runtime.broker.append
    publishing_start = threading.Event()

    async def slow_start(stream: str, entry_id: int, entry: dict[str, Any], **kw: Any) -> None:
        # `start` is the first event an answer appends to its broker stream.
        if entry.get("type") == "start" and entry["data"]["conversation"]["id"] == cid:
            publishing_start.set()
            for _ in range(6000):  # until the client who asked is gone, 60 s at most
                if not runtime.ws.clients(cid):
                    break
                await asyncio.sleep(0.01)
        await append(stream, entry_id, entry, **kw)

    monkeypatch.setattr(runtime.broker, "append", slow_start)
    slow = raw_websocket(tight.port, f"/ws/chat/{cid}")
    try:
        ask = {"type": "message", "content": "What does chlorophyll absorb?", "max_tokens": 4}
        send_text_frame(slow, json.dumps(ask, separators=(",", ":")))
        assert await asyncio.to_thread(publishing_start.wait, 120), "the answer never started"
        for i in range(200):
            response = await http.put(
                f"/api/chat/conversations/{cid}",
                json={"title": f"t{i}", "metadata": {"pad": PADDING}},
            )
            assert response.status_code == 200
            stats = (await http.get("/api/chat/stats")).json()["websocket"]
            if cid not in stats["clients_per_conversation"]:
                break
        else:
            pytest.fail("the client that never reads was not dropped")
    finally:
        slow.close()

    deadline = time.monotonic() + 120
    while (await http.get(f"/api/chat/conversations/{cid}")).json()["generation"] is not None:
        assert time.monotonic() < deadline, "the conversation is still reserved"
        await asyncio.sleep(0.1)
    again = await http.post(
        "/api/chat/message",
        json={"message": QUESTION, "conversation_id": cid, "max_tokens": 2},
    )
    assert again.status_code == 200, again.text
    stored = (await http.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ] * 2
