"""WebSocket /ws/notebooks/{id}: every event of one notebook (documents added, updated with
their step and progress, deleted; jobs; conversations), so open interfaces update by themselves.

Frames sent: `{"type": "ready", "notebook_id", "documents": [...]}` first (a snapshot taken
after subscribing, so nothing falls between), then each event as published. The client may
send `{"type": "ping"}` (answered with `pong`); anything else gets an `error` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from studyrag.api.deps import ReadDep
from studyrag.api.ws import frames
from studyrag.auth.policy import Access, Principal
from studyrag.auth.shares import SHARE_REMOVED
from studyrag.errors import InvalidFrame, StudyRAGError
from studyrag.jobs.events import notebook_channel
from studyrag.schemas.documents import DocumentPublic
from studyrag.services import Services

router = APIRouter()

_MAX_FRAME = 4096


@router.websocket("/ws/notebooks/{notebook_id}")
async def notebook_socket(websocket: WebSocket, notebook_id: str, principal: ReadDep) -> None:
    services: Services = websocket.app.state.services
    access = services.auth.access
    await websocket.accept()
    try:
        await access.notebook(principal, notebook_id)
        await services.notebooks.repo.get(notebook_id)
    except StudyRAGError as exc:
        await websocket.send_json({"type": "error", **exc.to_dict()})
        await websocket.close(code=4404)
        return
    subscription = services.broker.subscribe(notebook_channel(notebook_id))
    first = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)
    reader = asyncio.ensure_future(_read(websocket))
    connected = websocket.app.state.metrics.websocket_connections.labels(endpoint="notebook")
    connected.inc()
    try:
        docs, _ = await services.documents.list(notebook_id=notebook_id, limit=1000)
        await websocket.send_json(
            {
                "type": "ready",
                "notebook_id": notebook_id,
                "documents": [DocumentPublic.from_row(d).model_dump(mode="json") for d in docs],
            }
        )
        pending: asyncio.Future[Any] = first
        while True:
            done, _ = await asyncio.wait({pending, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                return  # the client went away
            event = pending.result()
            if event.get("type") == SHARE_REMOVED:
                # A share taken away: a user who no longer sees the notebook is let go.
                try:
                    await access.notebook(principal, notebook_id)
                except StudyRAGError as exc:
                    await websocket.send_json({"type": "error", **exc.to_dict()})
                    await websocket.close(code=4404)
                    return
            elif await _visible(access, principal, event):
                await websocket.send_text(json.dumps(event))
            pending = asyncio.ensure_future(anext(subscription))
            first = pending
    except WebSocketDisconnect:
        return
    finally:
        connected.dec()
        for task in (first, reader):
            task.cancel()
        with contextlib.suppress(Exception):
            await subscription.aclose()  # type: ignore[attr-defined]


async def _visible(access: Access, principal: Principal, event: dict[str, Any]) -> bool:
    """Conversation events reach only the conversation's owner: a shared notebook's
    viewers see its documents, never each other's conversations."""
    conversation = event.get("conversation")
    if not isinstance(conversation, dict):
        return True
    try:
        await access.conversation(principal, str(conversation.get("id")))
    except StudyRAGError:
        return False
    return True


async def _read(websocket: WebSocket) -> None:
    """Answer pings and refuse anything else with an error frame, until the client leaves."""
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        if message["type"] == "websocket.disconnect":
            return
        raw: str | bytes | None = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        try:
            frames.check_size(raw, _MAX_FRAME)
            frame = frames.loads(raw)
            if not isinstance(frame, dict) or frame.get("type") != "ping":
                raise InvalidFrame(
                    'This socket only sends events; the only frame it takes is {"type": "ping"}.',
                    hint='Send {"type": "ping"} to check the connection, or nothing.',
                )
        except StudyRAGError as exc:
            await websocket.send_json({"type": "error", **exc.to_dict()})
            continue
        await websocket.send_json({"type": "pong"})
