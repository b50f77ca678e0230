"""The chat REST API: ask, conversations CRUD, messages, cleanup, stop and statistics.

Every change made here is pushed to the conversation's WebSocket clients: answers through
the GenerationHub's broker channel, updates and deletions as frames.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from studyrag.api.deps import AccessDep, ChatDep, ServicesDep
from studyrag.api.errors import max_body_bytes
from studyrag.api.runtime import ChatRuntimeDep
from studyrag.auth.policy import ADMIN
from studyrag.auth.quotas import client_key
from studyrag.chat.conversations import MAX_PAGE_SIZE, TITLE_MAX_CHARS
from studyrag.chat.engine import ChatEngine, check_message
from studyrag.chat.prompts import check_template_name
from studyrag.errors import (
    GenerationFailed,
    GenerationInProgress,
    InvalidChatRequest,
    PayloadTooLarge,
)
from studyrag.schemas.base import SQLITE_INT_MAX
from studyrag.schemas.chat import ChatRequest, ChatResponse, StopResult
from studyrag.schemas.conversations import (
    CleanupReport,
    CleanupRequest,
    ConversationCreate,
    ConversationDeleted,
    ConversationDetail,
    ConversationPage,
    ConversationPublic,
    ConversationUpdate,
    MessagePage,
)

router = APIRouter(prefix="/api/chat", tags=["chat"])


def limit_body(request: Request, services: ServicesDep) -> None:
    """413 CHAT_010 for a body over the chat limit, judged by its declared length."""
    declared = request.headers.get("content-length", "")
    limit = max_body_bytes(services.settings)
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"The request body has {declared} bytes; the limit is {limit}.",
            details={"size": int(declared), "limit": limit},
            hint="Send a shorter message.",
        )


@router.post("/message", dependencies=[Depends(limit_body)])
async def post_message(
    body: ChatRequest,
    request: Request,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> ChatResponse:
    """Answer one question; without conversation_id a new conversation starts."""
    options = body.engine_kwargs(services.settings)
    if body.conversation_id is not None:
        await access.conversation(principal, body.conversation_id)
    if body.conversation_id is None or options.get("notebook_id"):
        options["notebook_id"] = await access.resolve_notebook(
            principal, options.get("notebook_id")
        )
    question = check_message(
        body.message,
        services.settings,
        model=services.chat_model,
        max_tokens=options["max_tokens"],
    )
    await services.limits.message(client_key(request))
    gen = await runtime.hub.start_answer(
        question,
        conversation_id=body.conversation_id,
        options=options,
    )
    # The answer is owned by the hub: if this client goes away, it still completes.
    await gen.wait()
    final = gen.events[-1]
    if final.type == "error":
        raise gen.exception or GenerationFailed(str(final.data.get("message")))
    message = final.data["message"]
    return ChatResponse.model_validate(
        {
            "message": message,
            "conversation": final.data["conversation"],
            "sources": message.get("sources") or [],
            "metadata": final.data["metadata"],
        }
    )


# --- conversations -----------------------------------------------------------------------
@router.get("/conversations")
async def list_conversations(
    services: ServicesDep,
    principal: ChatDep,
    access: AccessDep,
    notebook_id: str | None = Query(default=None, max_length=64, description="Of one notebook"),
    status: Literal["active", "archived", "deleted"] | None = None,
    q: str | None = Query(default=None, max_length=TITLE_MAX_CHARS, description="Title contains"),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    updated_after: datetime | None = None,
    updated_before: datetime | None = None,
    limit: int = Query(default=20, ge=1, le=MAX_PAGE_SIZE),
    cursor: str | None = Query(default=None, max_length=512),
    offset: int = Query(default=0, ge=0, le=SQLITE_INT_MAX),
) -> ConversationPage:
    """Conversations by latest activity; follow next_cursor for the next page."""
    if notebook_id is not None:
        await access.notebook(principal, notebook_id)
        await services.notebooks.repo.get(notebook_id)
    page = await services.conversations.list(
        notebook_id=notebook_id,
        # Conversations are private: a user lists only their own, also in shared notebooks.
        owner_id=principal.user_id,
        status=status,
        title_search=q,
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
        limit=limit,
        cursor=cursor,
        offset=offset,
    )
    return page


def check_template(template: object, chat: ChatEngine | None) -> None:
    """CHAT_006 (422) unless `template` is None or a known template name."""
    # metadata["template"] is every later answer's default: a bad one would fail them all.
    # Without a chat model the names are unknown; the engine checks them when one answers.
    if template is not None:
        templates = chat.templates if chat is not None else None
        check_template_name(template, templates, field="metadata.template")


@router.post("/conversations", status_code=201)
async def create_conversation(
    body: ConversationCreate, services: ServicesDep, principal: ChatDep, access: AccessDep
) -> ConversationPublic:
    """Start an empty conversation; `template` becomes its answers' default."""
    metadata = dict(body.metadata or {})
    if body.template is not None:
        metadata["template"] = body.template
    check_template(metadata.get("template"), services.chat)
    notebook_id = await access.resolve_notebook(principal, body.notebook_id)
    return await services.conversations.create(
        title=body.title, metadata=metadata, notebook_id=notebook_id
    )


@router.get("/conversations/{conversation_id}")
async def get_conversation(
    conversation_id: str,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> ConversationDetail:
    """One conversation, with the answer in progress if any."""
    await access.conversation(principal, conversation_id)
    conversation = await services.conversations.get(conversation_id)
    gen = await runtime.hub.find_current(conversation_id)
    return ConversationDetail(
        **conversation.model_dump(), generation=gen.info() if gen is not None else None
    )


@router.put("/conversations/{conversation_id}")
async def update_conversation(
    conversation_id: str,
    body: ConversationUpdate,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> ConversationPublic:
    """Rename, replace metadata, archive or unarchive; clients get conversation_updated."""
    await access.conversation(principal, conversation_id)
    if body.metadata is not None:
        check_template(body.metadata.get("template"), services.chat)
    conversation = await services.conversations.update(
        conversation_id, title=body.title, metadata=body.metadata, status=body.status
    )
    await runtime.ws.broadcast(
        conversation_id, {"type": "conversation_updated", "conversation": conversation.to_dict()}
    )
    return conversation


@router.delete("/conversations/{conversation_id}")
async def delete_conversation(
    conversation_id: str,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> ConversationDeleted:
    """Soft delete: hidden at once (404 afterwards), its answer stopped, clients told."""
    await access.conversation(principal, conversation_id)
    await services.conversations.soft_delete(conversation_id)
    await runtime.hub.stop(conversation_id)
    await runtime.ws.broadcast(
        conversation_id, {"type": "conversation_deleted", "conversation_id": conversation_id}
    )
    return ConversationDeleted(deleted=conversation_id)


@router.get("/conversations/{conversation_id}/messages")
async def list_messages(
    conversation_id: str,
    services: ServicesDep,
    principal: ChatDep,
    access: AccessDep,
    limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
    before_seq: int | None = Query(default=None, ge=0, le=SQLITE_INT_MAX),
    after_seq: int | None = Query(default=None, ge=0, le=SQLITE_INT_MAX),
    order: Literal["asc", "desc"] = "asc",
) -> MessagePage:
    """A page of messages next to a seq cursor (before_seq: older, after_seq: newer)."""
    await access.conversation(principal, conversation_id)
    return await services.conversations.list_messages(
        conversation_id, limit=limit, before_seq=before_seq, after_seq=after_seq, order=order
    )


@router.post("/conversations/{conversation_id}/cleanup")
async def cleanup_conversation(
    conversation_id: str,
    body: CleanupRequest,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> CleanupReport:
    """Keep the last N messages, drop incomplete or old ones, or purge a deleted conversation."""
    await access.conversation(principal, conversation_id)
    conversations = services.conversations
    if body.purge:
        conversation = await conversations.get(conversation_id, include_deleted=True)
        if conversation.status != "deleted":
            raise InvalidChatRequest(
                "Only a deleted conversation can be purged.",
                hint=f"DELETE /api/chat/conversations/{conversation_id} first.",
            )
        return await conversations.cleanup(conversation_id, purge_deleted_older_than=timedelta(0))
    await conversations.get(conversation_id)
    if body.drop_incomplete and await runtime.hub.find_current(conversation_id) is not None:
        # The answer being streamed is an incomplete message too.
        raise GenerationInProgress("Cannot drop incomplete messages while an answer runs.")
    report = await conversations.cleanup(
        conversation_id,
        keep_last=body.keep_last,
        older_than=timedelta(seconds=body.older_than_seconds)
        if body.older_than_seconds is not None
        else None,
        drop_incomplete=body.drop_incomplete,
    )
    report.conversation = await conversations.get(conversation_id)
    await runtime.ws.broadcast(
        conversation_id,
        {"type": "conversation_updated", "conversation": report.conversation.to_dict()},
    )
    return report


@router.post("/conversations/{conversation_id}/stop")
async def stop_generation(
    conversation_id: str,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> StopResult:
    """Stop the answer in progress; it is stored as incomplete with the text so far."""
    await access.conversation(principal, conversation_id)
    await services.conversations.get(conversation_id)
    gen = await runtime.hub.stop(conversation_id)
    if gen is None:
        return StopResult(stopped=False)
    final = gen.events[-1] if gen.events else None
    message = final.data.get("message") if final is not None and final.type == "done" else None
    return StopResult(stopped=True, message=message)


@router.get("/stats")
async def stats(
    services: ServicesDep, runtime: ChatRuntimeDep, principal: ChatDep, clients: bool = False
) -> dict[str, Any]:
    """Stored totals, live WebSocket connections, answers in flight and live metrics.

    `clients=true` (live conversation ids with addresses and user agents) is for admins."""
    if clients:
        ADMIN.check(principal)
    stored = await services.conversations.statistics()
    websocket = runtime.ws.stats(with_clients=clients)
    if not principal.is_admin:
        # Live conversation ids are other users' data: totals only.
        websocket.pop("clients_per_conversation", None)
    return stored | {"websocket": websocket, "generations": runtime.hub.stats()}
