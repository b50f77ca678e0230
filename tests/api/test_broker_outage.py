"""Redis goes away under a running worker and comes back: /health says so, new answers are
refused with CHAT_011, WebSocket clients are told, and the listeners resubscribe.

Uses a private `redis-server` on a free port (never the machine's shared one), so it can be
stopped and restarted without touching other test runs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from studyrag.config import BrokerSettings
from tests.api.conftest import QUESTION, new_conversation, run_server, server_settings, ws_client
from tests.conftest import free_port

pytestmark = pytest.mark.slow

REDIS_SERVER = shutil.which("redis-server")


@contextmanager
def private_redis(port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on `port` that keeps nothing on disk."""
    assert REDIS_SERVER is not None
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=port, socket_connect_timeout=0.5).ping():
                    break
            except redis.exceptions.RedisError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server failed"
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def _eventually_status(http: httpx.Client, status: int, within: float = 30) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        response = http.get("/health")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_restart_is_reported_refused_and_recovered(tmp_path: Path) -> None:
    port = free_port()
    settings = server_settings(tmp_path / "data").model_copy(
        update={"broker": BrokerSettings(url=f"redis://127.0.0.1:{port}/0")}
    )
    first = private_redis(port, tmp_path)
    first.__enter__()
    try:
        with run_server(settings) as live, httpx.Client(base_url=live.base, timeout=60) as sync:
            async with httpx.AsyncClient(base_url=live.base, timeout=120) as http:
                cid = await new_conversation(http)
                async with ws_client(live, cid) as watcher:
                    first.__exit__(None, None, None)  # Redis stops

                    health = _eventually_status(sync, 503)
                    assert health.status_code == 503, health.text
                    body = health.json()
                    assert "broker" in body["down"] and body["broker"]["status"] == "unavailable"
                    assert "CHAT_011" in body["broker"]["error"]["details"]["hint"]

                    refused = await http.post(
                        "/api/chat/message", json={"message": QUESTION, "conversation_id": cid}
                    )
                    assert refused.status_code == 503, refused.text
                    error = refused.json()
                    assert error["error_code"] == "CHAT_011"
                    assert "takes no new answers" in error["message"]
                    assert "Redis" in error["details"]["hint"]
                    # Nothing was stored for the refused question.
                    stored = await http.get(f"/api/chat/conversations/{cid}/messages")
                    assert stored.json()["items"] == []

                    # The socket's client is told live updates broke, and a message over
                    # it is refused the same way.
                    told = await watcher.until("error", within=20)
                    assert told["error_code"] == "CHAT_011"
                    await watcher.send({"type": "message", "content": QUESTION})
                    assert (await watcher.until("error", within=20))["error_code"] == "CHAT_011"

                    with private_redis(port, tmp_path):  # Redis is back, empty
                        assert _eventually_status(sync, 200).status_code == 200
                        # The conversation's subscription came back: a typing frame from a
                        # second client reaches the first one through Redis again.
                        deadline = time.monotonic() + 30
                        async with ws_client(live, cid) as typist:
                            while True:
                                await typist.send({"type": "typing", "is_typing": True})
                                try:
                                    frame = await watcher.until("typing", within=1)
                                    break
                                except TimeoutError:
                                    assert time.monotonic() < deadline, "never resubscribed"
                            assert frame["client_id"] == typist.client_id
                        # New answers are taken again and stream to the old socket.
                        await watcher.send(
                            {"type": "message", "content": QUESTION, "max_tokens": 8}
                        )
                        frames = await watcher.stream()
                        assert frames[-1]["type"] == "stream_end", frames[-1]
                        assert frames[-1]["message"]["status"] == "complete"
    finally:
        first.__exit__(None, None, None)
