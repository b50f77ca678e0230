"""GET /api/chat/stream/{conversation_id}: an answer as Server-Sent Events, resumable by id.

Every event's `id:` is its buffer id in the answer, so a client that reconnects with
`Last-Event-ID` gets exactly the events it missed. The answer itself belongs to the
GenerationHub: a client that disconnects does not stop or lose it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from studyrag.api.deps import ServicesDep
from studyrag.api.generations import BufferedEvent, Generation
from studyrag.api.ratelimit import http_client_key
from studyrag.api.runtime import ChatRuntimeDep, CountingRoute
from studyrag.api.schemas import (
    ABSOLUTE_MAX_MESSAGE_CHARS,
    ChatFilters,
    ChatOptions,
    SearchModeName,
    check_message,
)
from studyrag.errors import InvalidChatRequest, MessageNotFound

router = APIRouter(prefix="/api/chat", tags=["chat"], route_class=CountingRoute)


def sse_payload(event: BufferedEvent, message_id: str | None) -> dict[str, Any]:
    """The JSON data of one SSE event (see docs/protocol.md)."""
    data = event.data
    if event.type == "start":
        return {
            "conversation_id": data["conversation"]["id"],
            "message_id": data["assistant_message_id"],
            "user_message_id": data["user_message"]["id"],
            "conversation": data["conversation"],
            "user_message": data["user_message"],
        }
    if event.type == "sources":
        return {"message_id": message_id, "sources": data["sources"]}
    if event.type == "error":
        return {"request_id": None, **data}
    # token {seq, delta} and done {message, conversation, metadata} go out as the engine made them.
    return data


async def _events(gen: Generation, after: int) -> AsyncIterator[ServerSentEvent]:
    async for event in gen.follow(after):
        yield ServerSentEvent(
            data=json.dumps(sse_payload(event, gen.message_id), ensure_ascii=False, default=str),
            event=event.type,
            id=str(event.id),
        )


async def _nothing() -> AsyncIterator[ServerSentEvent]:
    error = MessageNotFound(
        "No answer is being generated in this conversation, and none finished recently.",
        hint="Pass ?message=... to ask a question.",
    )
    yield ServerSentEvent(data=json.dumps(error.to_dict(None)), event="error")


def _last_event_id(request: Request, query: int | None) -> int | None:
    header = request.headers.get("last-event-id")
    if header is None or not header.strip():
        return query
    try:
        value = int(header.strip())
    except ValueError:
        raise InvalidChatRequest(
            "Last-Event-ID must be the id of an event this stream sent.",
            details={"last_event_id": header[:40]},
        ) from None
    if value < 0:
        raise InvalidChatRequest("Last-Event-ID cannot be negative.")
    return value


@router.get("/stream/{conversation_id}", response_class=EventSourceResponse)
async def stream(
    conversation_id: str,
    request: Request,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    message: str | None = Query(default=None, max_length=ABSOLUTE_MAX_MESSAGE_CHARS),
    template: str | None = Query(default=None, min_length=1, max_length=100),
    top_k: int | None = Query(default=None, ge=1, le=50),
    max_tokens: int | None = Query(default=None, ge=1, le=32_768),
    search_mode: SearchModeName | None = None,
    document_ids: list[str] | None = Query(default=None),
    file_types: list[str] | None = Query(default=None),
    last_event_id: int | None = Query(default=None, ge=0),
) -> EventSourceResponse:
    """Ask (`message`) or attach to the answer in progress; `Last-Event-ID` replays the rest."""
    # A reconnect carrying Last-Event-ID never starts a new answer, even with `message`:
    # that is what a browser's EventSource sends when it reconnects by itself.
    resume_from = _last_event_id(request, last_event_id)
    await services.conversations.get(conversation_id)
    ping = services.settings.api.sse_ping_interval
    if message is not None and resume_from is None:
        question = check_message(message, services.settings)
        options = ChatOptions(
            template=template,
            top_k=top_k,
            max_tokens=max_tokens,
            search_mode=search_mode,
            filters=ChatFilters(document_ids=document_ids, file_types=file_types)
            if document_ids or file_types
            else None,
        )
        await runtime.limiter.check(http_client_key(request))
        gen = await runtime.hub.start_answer(
            question,
            conversation_id=conversation_id,
            options=options.engine_kwargs(services.settings),
        )
        return EventSourceResponse(_events(gen, 0), ping=ping)
    latest = runtime.hub.latest(conversation_id)
    if latest is None:
        return EventSourceResponse(_nothing(), ping=ping)
    return EventSourceResponse(_events(latest, resume_from or 0), ping=ping)
