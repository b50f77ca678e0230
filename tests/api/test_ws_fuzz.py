"""A small WebSocket fuzz of /ws/chat and /ws/notebooks over real sockets.

Garbage text, binary frames, deep nesting, unknown types, wrong field types and a flood:
every bad frame gets an error frame in the house shape, the connection stays open, and the
other clients of the same conversation see none of it.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
import websockets

from studyrag.api.ws.frames import MAX_DEPTH
from tests.api.conftest import LiveServer, new_conversation, ws_client

pytestmark = pytest.mark.slow

ERROR_KEYS = {"type", "error_code", "message", "details", "request_id"}


def deep(levels: int) -> str:
    """A ~2 KB frame of arrays nested `levels` deep (980 raised RecursionError before)."""
    return "[" * levels + "]" * levels


def garbage(rng: random.Random) -> list[str | bytes]:
    """Frames that are not valid client frames, text and binary."""
    frames: list[str | bytes] = [
        "",
        "nul\x00l",
        "{",
        '{"type": ',
        "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        "null",
        "1e999999",
        '"ping"',
        deep(980),
        '{"type": "ping", "x": ' + deep(MAX_DEPTH + 1) + "}",
        '{"type": "message", "content": "hi", "filters": ' + '{"a":' * 500 + "1" + "}" * 501,
        b"\xff\xfe\x00binary",
        b'{"type": "dance"}',
        bytes(rng.randrange(256) for _ in range(512)),
        json.dumps({"type": "dance"}),
        json.dumps({"type": 7}),
        json.dumps({"type": None}),
        json.dumps({"type": ["ping"]}),
        json.dumps({"type": "message", "content": 12}),
        json.dumps({"type": "message", "content": ["a"]}),
        json.dumps({"type": "message", "content": "hi", "top_k": "many"}),
        json.dumps({"type": "message", "content": "hi", "max_tokens": 2**70}),
        json.dumps({"type": "typing", "is_typing": "yes"}),
        json.dumps({"type": "resume", "message_id": 5, "last_seq": "x"}),
        json.dumps({"type": "resume", "message_id": "x", "last_seq": 2**64}),
    ]
    for _ in range(20):
        frames.append("".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 80))))
    return frames


async def replies(connection: websockets.ClientConnection, n: int) -> list[dict[str, Any]]:
    """The next `n` frames that answer ours (error or pong), skipping server pings."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        frame = json.loads(await asyncio.wait_for(connection.recv(), 60))
        if frame["type"] in ("error", "pong"):
            out.append(frame)
    return out


async def test_chat_socket_survives_fuzz_and_other_clients_are_unaffected(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    rng = random.Random(12)
    cid = await new_conversation(http)
    async with ws_client(live, cid) as fuzzer, ws_client(live, cid) as other:
        frames = garbage(rng)
        for frame in frames:
            await fuzzer.connection.send(frame)
            (error,) = await replies(fuzzer.connection, 1)
            assert error["type"] == "error", (frame[:60], error)
            assert set(error) >= ERROR_KEYS and error["details"].get("hint"), error
            assert error["error_code"] in ("CHAT_006", "CHAT_008", "CHAT_009"), (frame[:60], error)

        # A flood, sent without waiting, read concurrently: one answer per frame, in order.
        # It stays within the client's send queue (api.ws_send_queue, 256): past that the
        # documented answer is a 4408 close, which a loaded machine may reach at any size.
        flood = [rng.choice(frames) if i % 5 else '{"type": "ping"}' for i in range(200)]
        reader = asyncio.ensure_future(replies(fuzzer.connection, len(flood)))
        for frame in flood:
            await fuzzer.connection.send(frame)
        got = await reader
        assert [g["type"] for g in got] == [
            "pong" if f == '{"type": "ping"}' else "error" for f in flood
        ]

        # Still open, and the other client of the conversation saw none of it and still works.
        await fuzzer.send({"type": "typing", "is_typing": True})
        typing = await other.until("typing")
        assert typing["client_id"] == fuzzer.client_id
        await other.send({"type": "ping"})
        assert (await other.until("pong"))["type"] == "pong"
        assert not other.of("error")


async def test_notebook_socket_survives_fuzz(live: LiveServer, http: httpx.AsyncClient) -> None:
    rng = random.Random(13)
    nb = (await http.post("/api/notebooks", json={"name": "Fuzz"})).json()
    url = f"ws://127.0.0.1:{live.port}/ws/notebooks/{nb['id']}"
    async with websockets.connect(url) as fuzzer, websockets.connect(url) as other:
        for connection in (fuzzer, other):
            assert json.loads(await connection.recv())["type"] == "ready"
        frames = [*garbage(rng), json.dumps({"type": "ping", "pad": "x" * 5000})]
        for frame in frames:
            await fuzzer.send(frame)
            (error,) = await replies(fuzzer, 1)
            assert error["type"] == "error", (frame[:60], error)
            assert set(error) >= ERROR_KEYS and error["details"].get("hint"), error
            assert error["error_code"] in ("CHAT_009", "CHAT_010"), error
        reader = asyncio.ensure_future(replies(fuzzer, 200))
        for _ in range(200):
            await fuzzer.send(rng.choice(frames))
        assert all(g["type"] == "error" for g in await reader)
        for connection in (fuzzer, other):
            await connection.send('{"type": "ping"}')
            assert (await replies(connection, 1))[0]["type"] == "pong"
        # Events still arrive on both.
        uploaded = await http.post(
            f"/api/notebooks/{nb['id']}/documents",
            files=[("files", ("fuzz.md", b"# Fuzz\n\nChlorophyll absorbs red light."))],
        )
        assert uploaded.status_code == 202, uploaded.text
        for connection in (fuzzer, other):
            event = json.loads(await asyncio.wait_for(connection.recv(), 60))
            assert event["type"].startswith(("document", "job")), event
