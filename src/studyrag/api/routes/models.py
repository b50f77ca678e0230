"""Models over HTTP: what each provider serves, switching at runtime, pulling into Ollama."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sse_starlette.sse import EventSourceResponse

from studyrag.api.deps import ModelsDep, ServicesDep
from studyrag.api.errors import request_id_of
from studyrag.api.openapi import event_stream
from studyrag.auth.policy import ADMIN
from studyrag.errors import StudyRAGError
from studyrag.schemas.admin import ModelPull, ModelsPublic, ModelSwitch, ModelSwitched

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[Depends(ADMIN)])


@router.get("", response_model=ModelsPublic)
async def list_models(models: ModelsDep) -> ModelsPublic:
    """Chat and embedding models of every provider, with availability and the active ones."""
    return await models.list()


@router.post("/switch", response_model=ModelSwitched)
async def switch_model(body: ModelSwitch, models: ModelsDep, response: Response) -> ModelSwitched:
    """Chat: switched when this answers (200). Embedding: a reindex job started (202)."""
    result = await models.switch(body)
    if result.job_id is not None:
        response.status_code = 202
    return result


@router.post(
    "/pull",
    response_class=EventSourceResponse,
    responses=event_stream("The pull's progress"),
)
async def pull_model(
    body: ModelPull, request: Request, models: ModelsDep, services: ServicesDep
) -> EventSourceResponse:
    """Server-Sent Events: `progress` {status, completed, total}…, then `done` or `error`.
    An Ollama that does not answer is refused before the stream starts (503, CHAT_001)."""
    await models.check_ollama()

    async def stream() -> AsyncIterator[dict[str, Any]]:
        try:
            async for step in models.pull(body.name):
                yield {"event": "progress", "data": json.dumps({"name": body.name, **step})}
        except StudyRAGError as exc:
            yield {"event": "error", "data": json.dumps(exc.to_dict(request_id_of(request)))}
            return
        yield {"event": "done", "data": json.dumps({"name": body.name, "status": "success"})}

    return EventSourceResponse(stream(), ping=services.settings.api.sse_ping_interval)
