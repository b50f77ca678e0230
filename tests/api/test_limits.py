"""Limits and keep-alives on a server with small settings: rate limits, client caps, pings,
and a slow client that must not hold up the others."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator

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


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(
        tmp_path_factory.mktemp("tight"),
        rate_limit_per_minute=RATE,
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


async def test_http_rate_limit_is_429_with_retry_after(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    headers = {"X-Client-ID": "rate-test-http"}
    body = {"message": QUESTION, "conversation_id": cid, "max_tokens": 2}
    for _ in range(RATE):
        ok = await http.post("/api/chat/message", json=body, headers=headers)
        assert ok.status_code == 200, ok.text
    refused = await http.post("/api/chat/message", json=body, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error_code"] == "RATE_001"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["details"]["limit"] == RATE
    # Another client id has its own budget.
    other = await http.post("/api/chat/message", json=body, headers={"X-Client-ID": "other"})
    assert other.status_code == 200, other.text


async def test_websocket_rate_limit_is_an_error_frame(
    tight: LiveServer, http: httpx.AsyncClient
) -> None:
    cid = await new_conversation(http)
    async with ws_client(tight, cid) as a:
        for _ in range(RATE):
            await a.send({"type": "message", "content": QUESTION, "max_tokens": 2})
            assert (await a.stream())[-1]["type"] == "stream_end"
        await a.send({"type": "message", "content": QUESTION, "max_tokens": 2})
        error = await a.until("error")
        assert error["error_code"] == "RATE_001"
        assert 0 < error["retry_after"] <= 60
        assert error["details"]["retry_after"] == error["retry_after"]
        await a.send({"type": "ping"})
        assert (await a.until("pong"))["type"] == "pong", "still connected"


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
    async with http.stream("GET", f"/api/chat/stream/{cid}", params=params) as response:
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
            padding = "x" * 100_000
            updates = 80
            for i in range(updates):
                response = await http.put(
                    f"/api/chat/conversations/{cid}",
                    json={"title": f"t{i}", "metadata": {"pad": padding}},
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
