"""20 conversations × 3 WebSocket clients streaming at once: nothing lost, reordered or torn."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from tests.api.conftest import LiveServer, WSClient, chunks, new_conversation, ws_client

pytestmark = pytest.mark.slow

CONVERSATIONS = 20
CLIENTS = 3
# Answers share one model and are generated one after another: keep them tiny.
TOKENS = 8


async def test_twenty_conversations_three_clients_each(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    cids = [await new_conversation(http) for _ in range(CONVERSATIONS)]
    async with AsyncExitStack() as stack:
        clients: dict[str, list[WSClient]] = {
            cid: [await stack.enter_async_context(ws_client(live, cid)) for _ in range(CLIENTS)]
            for cid in cids
        }
        stats = (await http.get("/api/chat/stats")).json()["websocket"]
        assert all(stats["clients_per_conversation"][cid] == CLIENTS for cid in cids)

        async def converse(cid: str, n: int) -> list[list[dict[str, Any]]]:
            group = clients[cid]
            await group[n % CLIENTS].send(
                {
                    "type": "message",
                    "content": f"What does chlorophyll absorb? (asked in conversation {n})",
                    "max_tokens": TOKENS,
                }
            )
            return list(await asyncio.gather(*(c.stream(within=600) for c in group)))

        results = await asyncio.gather(*(converse(cid, n) for n, cid in enumerate(cids)))

    for cid, streams in zip(cids, results, strict=True):
        views = [[(f["type"], f.get("seq"), f.get("delta")) for f in s] for s in streams]
        assert views[0] == views[1] == views[2], f"clients of {cid} disagree"
        frames = streams[0]
        assert frames[0]["type"] == "user_message" and frames[-1]["type"] == "stream_end"
        seqs = [seq for seq, _ in chunks(frames)]
        assert seqs == list(range(1, len(seqs) + 1)) and seqs, f"chunks of {cid}: {seqs}"
        end = frames[-1]
        assert end["message"]["conversation_id"] == cid
        assert end["message"]["status"] == "complete"
        assert end["metadata"]["stats"]["completion_tokens"] == len(seqs)

        stored = (await http.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
        assert [m["seq"] for m in stored] == [1, 2]
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert stored[1]["id"] == end["message"]["id"]
        assert (
            stored[1]["status"] == "complete" and stored[1]["content"] == end["message"]["content"]
        )
        conversation = (await http.get(f"/api/chat/conversations/{cid}")).json()
        assert conversation["message_count"] == 2 and conversation["generation"] is None

    stats = (await http.get("/api/chat/stats")).json()
    assert stats["generations"]["in_flight"] == 0
    for _ in range(100):
        if not any(c in stats["websocket"]["clients_per_conversation"] for c in cids):
            break
        await asyncio.sleep(0.05)
        stats = (await http.get("/api/chat/stats")).json()
    assert not any(c in stats["websocket"]["clients_per_conversation"] for c in cids)
