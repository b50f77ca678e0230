"""Server shutdown: every WebSocket is closed with 1001 and the answer in flight is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from studyrag.chat.conversations import ConversationManager
from studyrag.db.session import Database
from tests.api.conftest import new_conversation, run_server, server_settings, ws_client

pytestmark = pytest.mark.slow


async def test_shutdown_closes_sockets_with_1001_and_stores_the_partial_answer(
    tmp_path: Path,
) -> None:
    settings = server_settings(tmp_path / "data")
    with run_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=120) as http:
            cid = await new_conversation(http)
            other = await new_conversation(http)
        async with ws_client(server, cid) as a, ws_client(server, other) as b:
            await a.send(
                {
                    "type": "message",
                    "content": "Explain in detail how photosynthesis works in plant cells.",
                    "max_tokens": 160,
                }
            )
            start = await a.until("stream_start")
            await a.until("stream_chunk")
            # Stopped from another thread so this loop can complete the closing handshakes.
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            codes = []
            for client in (a, b):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await client.recv(within=30)
                assert closed.value.rcvd is not None
                codes.append(closed.value.rcvd.code)
            await stopping
    assert codes == [1001, 1001]

    db = Database(settings.database_url)
    try:
        stored = await ConversationManager(db).get_message(start["message_id"])
    finally:
        await db.aclose()
    assert stored.status == "incomplete"
