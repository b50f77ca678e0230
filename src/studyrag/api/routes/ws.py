"""/ws/chat/{conversation_id}: one client of one conversation (docs/protocol.md).

The endpoint admits the client through the WebSocketManager, then reads its frames until it
goes away: a bad frame is answered with an error frame, never fatal.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from studyrag.api.deps import ChatDep
from studyrag.api.generations import GenerationHub
from studyrag.api.ws.frames import (
    CLOSE_INTERNAL,
    CLOSE_NOT_FOUND,
    CLOSE_TRY_AGAIN,
    check_size,
    dumps,
    error_frame,
    parse,
    validate,
)
from studyrag.api.ws.manager import CLOSE_TIMEOUT, WebSocketManager, WSClient
from studyrag.auth.quotas import Limits, client_key
from studyrag.chat.engine import check_message
from studyrag.config import Settings
from studyrag.errors import (
    ConversationNotFound,
    MessageNotFound,
    StudyRAGError,
    TooManyConnections,
)
from studyrag.schemas.chat import WSMessageFrame, WSResumeFrame, WSTypingFrame

router = APIRouter(tags=["chat"])


@router.websocket("/ws/chat/{conversation_id}")
async def chat_socket(websocket: WebSocket, conversation_id: str, principal: ChatDep) -> None:
    """One client of one conversation: see docs/protocol.md for frames and close codes.

    The handshake is refused (403) without valid credentials in multi-user mode; another
    user's conversation is answered as an unknown one (4404)."""
    services = websocket.app.state.services
    runtime = websocket.app.state.chat_runtime
    manager: WebSocketManager = runtime.ws
    await websocket.accept()
    try:
        await services.auth.access.conversation(principal, conversation_id)
        await services.conversations.get(conversation_id)
        client = await manager.connect(websocket, conversation_id)
    except StudyRAGError as exc:
        runtime.hub.metrics.error(exc.error_code)
        code = {
            ConversationNotFound: CLOSE_NOT_FOUND,
            TooManyConnections: CLOSE_TRY_AGAIN,
        }.get(type(exc), CLOSE_INTERNAL)
        with suppress(WebSocketDisconnect, OSError, RuntimeError):
            await websocket.send_text(dumps(error_frame(exc)))
            await websocket.close(code, exc.message[:120])
        return
    session = _Session(client, manager, runtime.hub, services.limits, services.settings)
    client.reader = asyncio.current_task()
    try:
        await session.read()
    except asyncio.CancelledError:
        if client.kill is None or client.reader is None:
            raise  # not ours: the server is going down
        client.reader.uncancel()
        with suppress(Exception):
            await asyncio.wait_for(websocket.close(*client.kill), timeout=CLOSE_TIMEOUT)
    finally:
        manager.disconnect(client)


class _Session:
    """The reading side of one connection: validates frames and acts on them."""

    def __init__(
        self,
        client: WSClient,
        manager: WebSocketManager,
        hub: GenerationHub,
        limits: Limits,
        settings: Settings,
    ) -> None:
        self.client = client
        self.manager = manager
        self.hub = hub
        self.limits = limits
        self.settings = settings

    async def read(self) -> None:
        """Until the client goes away; a bad frame is answered, never fatal."""
        websocket = self.client.websocket
        max_bytes = self.settings.api.ws_max_frame_bytes
        while True:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            if message["type"] == "websocket.disconnect":
                return
            self.client.last_seen = time.time()
            raw: str | bytes | None = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            try:
                check_size(raw, max_bytes)
                await self.handle(parse(raw))
            except StudyRAGError as exc:
                self.hub.metrics.error(exc.error_code)
                self.manager.send(self.client, error_frame(exc))

    async def handle(self, frame: dict[str, Any]) -> None:
        """Act on one valid frame."""
        type_ = frame["type"]
        if type_ != "resume":
            self.manager.attach(self.client)
        if type_ == "message":
            await self._message(validate(WSMessageFrame, frame))
        elif type_ == "ping":
            self.manager.send(self.client, {"type": "pong", "ts": time.time()})
        elif type_ == "typing":
            typing = validate(WSTypingFrame, frame)
            await self.manager.broadcast(
                self.client.conversation_id,
                {"type": "typing", "client_id": self.client.id, "is_typing": typing.is_typing},
                exclude=self.client.id,
            )
        elif type_ == "stop":
            if await self.hub.stop(self.client.conversation_id) is None:
                raise MessageNotFound(
                    "No answer is being generated in this conversation.",
                    hint="Nothing to stop.",
                )
        elif type_ == "resume":
            resume = validate(WSResumeFrame, frame)
            await self.manager.resume(self.client, resume.message_id, resume.last_seq)
        # pong: nothing to do; last_seen was updated when it arrived.

    async def _message(self, frame: WSMessageFrame) -> None:
        engine = self.hub.chat
        options = frame.engine_kwargs(self.settings)
        question = check_message(
            frame.content,
            self.settings,
            model=engine.model if engine is not None else None,
            max_tokens=options["max_tokens"],
        )
        # The address, not this socket's id: reconnecting must not reset the budget.
        await self.limits.message(client_key(self.client.websocket))
        await self.hub.start_answer(
            question,
            conversation_id=self.client.conversation_id,
            options=options,
        )
