"""The chat transport the lifespan builds: broker, generation hub, WebSocket manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from studyrag.api.generations import GenerationHub
from studyrag.api.ws.manager import WebSocketManager
from studyrag.backends.broker.base import Broker
from studyrag.services import Services


@dataclass(slots=True)
class ChatRuntime:
    broker: Broker
    hub: GenerationHub
    ws: WebSocketManager


@asynccontextmanager
async def open_chat_runtime(services: Services) -> AsyncIterator[ChatRuntime]:
    """Start the broker, the hub and the manager; on exit close sockets (1001), then answers."""
    settings = services.settings
    async with AsyncExitStack() as stack:
        broker = services.broker
        hub = GenerationHub(
            chat=services.chat,
            conversations=services.conversations,
            broker=broker,
            metrics=services.metrics,
        )
        stack.push_async_callback(hub.aclose)
        await hub.start()
        manager = WebSocketManager(broker=broker, hub=hub, settings=settings)
        # Last in, first out: sockets close with 1001 before the answers are cancelled.
        stack.push_async_callback(manager.aclose)
        await manager.start()
        yield ChatRuntime(broker=broker, hub=hub, ws=manager)


def get_chat_runtime(conn: HTTPConnection) -> ChatRuntime:
    runtime: ChatRuntime = conn.app.state.chat_runtime
    return runtime


ChatRuntimeDep = Annotated[ChatRuntime, Depends(get_chat_runtime)]
