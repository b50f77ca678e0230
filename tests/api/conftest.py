"""A real uvicorn server on 127.0.0.1 with the real MiniLM embedder and SmolLM2, and clients.

Streaming and broadcast can only be tested over real sockets: in-process transports buffer
whole bodies. Each server runs in its own thread with its own event loop and data directory.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI

from studyrag.app import StudyRAGServer, create_app
from studyrag.config import APISettings, ChatSettings, LLMSettings, Settings
from tests.conftest import free_port

NOTES = """# Plant Biology Notes

## Photosynthesis

Photosynthesis happens in the chloroplasts of plant cells. Chlorophyll absorbs blue and red
light and reflects green light, which is why leaves look green. The plant turns carbon
dioxide and water into glucose and releases oxygen.

## Cellular respiration

Mitochondria are the site of cellular respiration. They break glucose down and make ATP,
the energy currency of the cell.

## Plant cell walls

Plant cells have rigid walls made of cellulose that keep their shape.
"""

QUESTION = "Why do leaves look green? What does chlorophyll absorb?"
# Answers are kept short: the model is real, and tests only need a few tokens of it.
SHORT = 16


def server_settings(data_dir: Path, **api: Any) -> Settings:
    """Settings of a test server: real llama.cpp model, small limits where a test needs them."""
    return Settings(
        data_dir=data_dir,
        llm=LLMSettings(provider="llamacpp", max_tokens=160, n_threads=2),
        chat=ChatSettings(rewrite_followups=False),
        api=APISettings(**({"rate_limit_per_minute": 0} | api)),
    )


@dataclass
class LiveServer:
    """A running server and what a test needs to talk to it."""

    app: FastAPI
    settings: Settings
    port: int
    server: StudyRAGServer
    thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, conversation_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/{conversation_id}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the test server did not shut down"


@contextmanager
def run_server(
    settings: Settings,
    *,
    ingest: bool = True,
    with_chat: bool = True,
    app: FastAPI | None = None,
    host: str = "127.0.0.1",
) -> Iterator[LiveServer]:
    """Start create_app(settings) (or `app`) under uvicorn in a thread; stop it on exit."""
    app = app or create_app(settings, with_chat=with_chat)
    port = free_port()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", ws="auto"
    )
    server = StudyRAGServer(config, app=app)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server failed to start; see the log above")
        if time.monotonic() > deadline:
            raise TimeoutError("the test server did not start within 180 s")
        time.sleep(0.05)
    live = LiveServer(app=app, settings=settings, port=port, server=server, thread=thread)
    try:
        if ingest:
            with httpx.Client(base_url=live.base, timeout=120) as http:
                response = http.post(
                    "/api/documents", files={"file": ("plants.md", NOTES.encode(), "text/markdown")}
                )
                assert response.status_code == 201, response.text
                assert response.json()["status"] == "completed", response.text
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shared server: no rate limit, default connection limits."""
    with run_server(server_settings(tmp_path_factory.mktemp("live"))) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.base, timeout=120) as client:
        yield client


async def new_conversation(http: httpx.AsyncClient, title: str | None = None) -> str:
    """A fresh conversation's id."""
    body = {"title": title} if title else {}
    response = await http.post("/api/chat/conversations", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- WebSocket helpers -------------------------------------------------------------------
class WSClient:
    """A real `websockets` client that keeps every frame it receives."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.frames: list[dict[str, Any]] = []
        self.client_id = ""

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.connection.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, within: float = 60) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), within)
        frame: dict[str, Any] = json.loads(raw)
        self.frames.append(frame)
        return frame

    async def until(self, type_: str, within: float = 120) -> dict[str, Any]:
        """Receive frames until one of `type_` (the others are kept)."""
        deadline = time.monotonic() + within
        while True:
            frame = await self.recv(max(0.1, deadline - time.monotonic()))
            if frame["type"] == type_:
                return frame

    async def stream(self, within: float = 180) -> list[dict[str, Any]]:
        """The frames of one answer, from wherever we are up to stream_end (or error)."""
        start = len(self.frames)
        deadline = time.monotonic() + within
        while True:
            frame = await self.recv(max(0.1, deadline - time.monotonic()))
            if frame["type"] in ("stream_end", "error"):
                return self.frames[start:]

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == type_]


@asynccontextmanager
async def ws_client(
    live: LiveServer, conversation_id: str, **kwargs: Any
) -> AsyncIterator[WSClient]:
    """Connected and past the `connected` frame."""
    async with websockets.connect(live.ws_url(conversation_id), **kwargs) as connection:
        client = WSClient(connection)
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        client.client_id = hello["client_id"]
        yield client


def chunks(frames: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(seq, delta) of the stream_chunk frames, in arrival order."""
    return [(f["seq"], f["delta"]) for f in frames if f["type"] == "stream_chunk"]


# --- SSE helpers -------------------------------------------------------------------------
@dataclass
class SSEEvent:
    event: str
    data: dict[str, Any]
    id: str | None


async def sse_events(
    response: httpx.Response, *, limit: int | None = None
) -> AsyncIterator[SSEEvent]:
    """Parse a text/event-stream body; comments (pings) are skipped."""
    event, data, event_id = "message", [], None
    seen = 0
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SSEEvent(event, json.loads("\n".join(data)), event_id)
                seen += 1
                if limit is not None and seen >= limit:
                    return
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
