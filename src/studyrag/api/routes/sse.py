"""/api/chat/stream/{conversation_id}: an answer as Server-Sent Events, resumable by id.

POST asks (and streams the new answer); GET attaches to the current or latest answer.

Every event's `id:` is `<generation id>:<buffer id>`, so a client that reconnects with
`Last-Event-ID` gets exactly the events it missed of that answer. Buffer ids restart at 1 in
every answer: the prefix is what tells a reconnect during a later answer to replay that one
whole instead of skipping its beginning. The answer itself belongs to the GenerationHub: a
client that disconnects does not stop or lose it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from studyrag.api.deps import AccessDep, ChatDep, ServicesDep
from studyrag.api.generations import BufferedEvent, Generation
from studyrag.api.openapi import event_stream
from studyrag.api.runtime import ChatRuntimeDep
from studyrag.auth.quotas import client_key
from studyrag.chat.engine import ABSOLUTE_MAX_MESSAGE_CHARS, check_message
from studyrag.errors import InvalidChatRequest, MessageNotFound
from studyrag.schemas.chat import StreamRequest

router = APIRouter(prefix="/api/chat", tags=["chat"])

# `<generation id>:<n>`, or a bare `<n>` from a client of the former protocol.
_EVENT_ID = re.compile(r"(?:(?P<gen>[0-9A-Za-z]{1,64}):)?(?P<n>[0-9]{1,18})")


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


def event_id(gen: Generation, event: BufferedEvent) -> str:
    """The SSE `id:` of one event: unique across answers, not only within one."""
    return f"{gen.id}:{event.id}"


async def _events(gen: Generation, after: int) -> AsyncIterator[ServerSentEvent]:
    async for event in gen.follow(after):
        yield ServerSentEvent(
            data=json.dumps(sse_payload(event, gen.message_id), ensure_ascii=False, default=str),
            event=event.type,
            id=event_id(gen, event),
        )


async def _nothing() -> AsyncIterator[ServerSentEvent]:
    error = MessageNotFound(
        "No answer is being generated in this conversation, and none finished recently.",
        hint="POST a message to this URL to ask a question.",
    )
    yield ServerSentEvent(data=json.dumps(error.to_dict(None)), event="error")


def _last_event_id(request: Request, query: str | None) -> tuple[str | None, int] | None:
    """(generation id, buffer id) from Last-Event-ID (header, else query), or None if absent.

    A bare number, as sent by clients of the former protocol, names no answer: it comes back
    with no generation id, so the current answer is replayed whole rather than guessed at.
    """
    header = request.headers.get("last-event-id")
    raw = header if header is not None and header.strip() else query
    if raw is None or not raw.strip():
        return None
    match = _EVENT_ID.fullmatch(raw.strip())
    if match is None:
        raise InvalidChatRequest(
            "Last-Event-ID must be the id of an event this stream sent.",
            details={"last_event_id": raw[:80]},
            hint="Send the `id:` of the last event received, or omit it to attach from the start.",
        )
    return match["gen"], int(match["n"])


@router.post(
    "/stream/{conversation_id}",
    response_class=EventSourceResponse,
    responses=event_stream("The new answer's events"),
)
async def ask_stream(
    conversation_id: str,
    body: StreamRequest,
    request: Request,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> EventSourceResponse:
    """Ask: store the question and stream its answer from event 1 (409 if one runs)."""
    await access.conversation(principal, conversation_id)
    await services.conversations.get(conversation_id)
    kwargs = body.engine_kwargs(services.settings)
    question = check_message(
        body.message, services.settings, model=services.chat_model, max_tokens=kwargs["max_tokens"]
    )
    await services.limits.message(client_key(request))
    gen = await runtime.hub.start_answer(question, conversation_id=conversation_id, options=kwargs)
    return EventSourceResponse(_events(gen, 0), ping=services.settings.api.sse_ping_interval)


@router.get(
    "/stream/{conversation_id}",
    response_class=EventSourceResponse,
    responses=event_stream("The current or latest answer's events, after Last-Event-ID"),
)
async def stream(
    conversation_id: str,
    request: Request,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
    message: str | None = Query(default=None, max_length=ABSOLUTE_MAX_MESSAGE_CHARS),
    last_event_id: str | None = Query(default=None, max_length=100),
) -> EventSourceResponse:
    """Attach to the answer in progress (or the latest kept); `Last-Event-ID` replays the rest.

    A GET never starts an answer: asking is `POST` (a GET with side effects could be sent by
    any page, a link or a prefetch). `message` is accepted only alongside Last-Event-ID, which
    is what a browser's EventSource of the former protocol sends when it reconnects.
    """
    resume_from = _last_event_id(request, last_event_id)
    await access.conversation(principal, conversation_id)
    await services.conversations.get(conversation_id)
    if message is not None and resume_from is None:
        raise InvalidChatRequest(
            "A GET of the stream only attaches to an answer; asking a question is a POST.",
            details={"field": "message"},
            hint=f'POST /api/chat/stream/{conversation_id} with {{"message": ...}} as JSON.',
        )
    ping = services.settings.api.sse_ping_interval
    latest = await runtime.hub.find_latest(conversation_id)
    if latest is None:
        return EventSourceResponse(_nothing(), ping=ping)
    # An id from another answer (one that ended before this one began) says nothing about
    # this answer: it is replayed from its `start`.
    after = resume_from[1] if resume_from is not None and resume_from[0] == latest.id else 0
    return EventSourceResponse(_events(latest, after), ping=ping)
