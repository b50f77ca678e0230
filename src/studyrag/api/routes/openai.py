"""The OpenAI-compatible endpoint: /v1/models (one model per notebook) and
/v1/chat/completions, answered by the same engine and GenerationHub as /api/chat.

Errors take OpenAI's `{"error": {...}}` shape (api/main.py gives this area that body);
the rules (model → notebook, messages → question and history) are in chat/completions.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from studyrag.api.auth import require_api_key
from studyrag.api.deps import AccessDep, ChatDep, ReadDep, ServicesDep
from studyrag.api.generations import Generation
from studyrag.api.openapi import event_stream
from studyrag.api.runtime import ChatRuntimeDep
from studyrag.auth.policy import Access, Principal
from studyrag.auth.quotas import client_key
from studyrag.chat.completions import conversation_for, notebook_of_model, split_turn
from studyrag.chat.engine import check_message
from studyrag.db.models import Notebook
from studyrag.db.notebooks import name_key
from studyrag.errors import AmbiguousNotebook, GenerationFailed, NotebookNotFound
from studyrag.schemas.chat import ChatOptions
from studyrag.schemas.openai import (
    MODEL_PREFIX,
    ChatCompletionRequest,
    chunk,
    completion,
    completion_id,
    extras,
    finish_reason,
    model_id,
    model_object,
    openai_error_body,
    usage,
)
from studyrag.services import Services

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/models")
async def list_models(
    services: ServicesDep, principal: ReadDep, access: AccessDep
) -> dict[str, Any]:
    """Every notebook the caller sees as a model, `studyrag/<notebook name>`; one whose name
    names another notebook for the caller (names are unique per owner: the caller's own
    comes first) is `studyrag/<notebook id>`, so every model id reaches its notebook."""
    notebooks = await services.notebooks.list_public()
    visible = await access.visible_notebooks(principal)
    if visible is not None:
        notebooks = [nb for nb in notebooks if nb.id in visible]
    taken = Counter(name_key(nb.name) for nb in notebooks)
    data = []
    for nb in notebooks:
        label = nb.name
        if taken[name_key(nb.name)] > 1:
            try:
                named = (await access.find_notebook(principal, nb.name)).id
            except AmbiguousNotebook:
                named = None
            label = nb.name if named == nb.id else nb.id
        data.append(model_object(name=label, notebook_id=nb.id, created=_unix(nb.created_at)))
    return {"object": "list", "data": data}


@router.get("/models/{model:path}")
async def get_model(
    model: str, services: ServicesDep, principal: ReadDep, access: AccessDep
) -> dict[str, Any]:
    """One notebook as a model; NB_001 (404) for a model no notebook is."""
    nb = await _model_notebook(services, access, principal, model)
    return model_object(name=nb.name, notebook_id=nb.id, created=_unix(nb.created_at))


@router.post(
    "/chat/completions",
    response_model=None,
    responses=event_stream("A chat.completion, or chat.completion.chunk events", json_too=True),
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    services: ServicesDep,
    runtime: ChatRuntimeDep,
    principal: ChatDep,
    access: AccessDep,
) -> JSONResponse | StreamingResponse:
    """Answer the last user message from the notebook the model names (see docs/protocol.md)."""
    settings = services.settings
    notebook = await _model_notebook(services, access, principal, body.model)
    if body.conversation_id is not None:
        await access.conversation(principal, body.conversation_id)
    turn = split_turn(body.messages)
    question = check_message(turn.question, settings)
    await services.limits.message(client_key(request))
    conversation_id = await conversation_for(
        services.conversations,
        notebook_id=notebook.id,
        turn=turn,
        conversation_id=body.conversation_id,
    )
    options = ChatOptions(
        template=body.template,
        top_k=body.top_k,
        search_mode=body.search_mode,
        max_tokens=body.answer_tokens,
        notebook_id=notebook.id,
    )
    gen = await runtime.hub.start_answer(
        question, conversation_id=conversation_id, options=options.engine_kwargs(settings)
    )
    model = model_id(notebook.name)
    created = int(time.time())
    if body.stream:
        return StreamingResponse(
            _stream(gen, model=model, created=created, include_usage=body.include_usage),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    # The answer belongs to the hub: a client that goes away does not stop it.
    await gen.wait()
    final = gen.events[-1]
    if final.type == "error":
        raise gen.exception or GenerationFailed(str(final.data.get("message")))
    tokens = sum(1 for e in gen.events if e.type == "token")
    return JSONResponse(
        completion(final.data, model=model, created=created, streamed_tokens=tokens)
    )


async def _model_notebook(
    services: Services, access: Access, principal: Principal, model: str
) -> Notebook:
    """The notebook a model names, if the caller sees it; a hidden one is a missing model."""
    try:
        nb = await notebook_of_model(lambda ref: access.find_notebook(principal, ref), model)
        await access.notebook(principal, nb.id)
    except NotebookNotFound:
        # The same answer as for a notebook that does not exist.
        ref = model[len(MODEL_PREFIX) :]
        raise NotebookNotFound(
            f"The model {model!r} does not exist: no notebook is called {ref!r}.",
            details={"param": "model"},
            hint="GET /v1/models lists them.",
        ) from None
    return nb


def _unix(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment is not None else 0


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, default=str)
    return f"data: {data}\n\n".encode()


async def _stream(
    gen: Generation, *, model: str, created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    """The answer's events as chat.completion.chunk objects, then `data: [DONE]`."""
    id_ = completion_id(gen.message_id)
    tokens = 0
    async for event in gen.follow(0):
        if event.type == "start":
            id_ = completion_id(event.data.get("assistant_message_id"))
            yield _sse(
                chunk(
                    id_=id_,
                    model=model,
                    created=created,
                    delta={"role": "assistant", "content": ""},
                )
            )
        elif event.type == "token":
            tokens += 1
            delta = {"content": event.data["delta"]}
            yield _sse(chunk(id_=id_, model=model, created=created, delta=delta))
        elif event.type == "done":
            message = event.data["message"]
            metadata = message.get("metadata") or {}
            # The stored text can differ from the deltas (citations checked): it comes along.
            yield _sse(
                chunk(
                    id_=id_,
                    model=model,
                    created=created,
                    delta={},
                    finish=finish_reason(metadata),
                    final_content=message.get("content", ""),
                    **extras(message, str(event.data["conversation"]["id"])),
                )
            )
            if include_usage:
                yield _sse(
                    chunk(
                        id_=id_,
                        model=model,
                        created=created,
                        delta=None,
                        usage=usage(metadata, tokens),
                    )
                )
            yield _sse("[DONE]")
        elif event.type == "error":
            # An error after the stream began: OpenAI's error object as the last data line
            # (the official client raises it as an APIError).
            if gen.exception is not None:
                yield _sse(openai_error_body(gen.exception, ""))
            else:
                yield _sse(
                    {
                        "error": {
                            "message": str(event.data.get("message")),
                            "type": "server_error",
                            "param": None,
                            "code": event.data.get("error_code"),
                        }
                    }
                )
            return
