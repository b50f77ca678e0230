"""Jobs over HTTP: state, live events (SSE) and cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from studyrag.api.deps import AccessDep, ReadDep, ServicesDep, WriteDep
from studyrag.api.openapi import event_stream
from studyrag.db.jobs import JOB_FINISHED
from studyrag.jobs.events import job_channel
from studyrag.schemas.documents import JobPublic

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(
    job_id: str, services: ServicesDep, principal: ReadDep, access: AccessDep
) -> JobPublic:
    """A job with the step and progress of each of its documents."""
    await access.job(principal, job_id)
    return await services.jobs.public(job_id)


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(
    job_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> JobPublic:
    """Stop at the next step boundary; completed documents stay, nothing half-indexed does."""
    await access.job(principal, job_id)
    await services.jobs.cancel_job(job_id)
    return await services.jobs.public(job_id)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses=event_stream("The job's events"),
)
async def job_events(
    job_id: str, request: Request, services: ServicesDep, principal: ReadDep, access: AccessDep
) -> EventSourceResponse:
    """Server-Sent Events: a `snapshot` of the job, then every `document_updated`,
    `document_added`, `document_deleted`, `job_progress` and `job_updated` until it ends."""
    await access.job(principal, job_id)
    await services.jobs.public(job_id)  # 404 before the stream starts
    # Subscribed before the snapshot is read, so no event falls between the two.
    subscription = services.broker.subscribe(job_channel(job_id))
    first = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)

    async def stream() -> AsyncIterator[dict[str, Any]]:
        pending: asyncio.Future[Any] | None = first
        try:
            snapshot = await services.jobs.public(job_id)
            yield {"event": "snapshot", "data": snapshot.model_dump_json()}
            if snapshot.status in JOB_FINISHED:
                return
            while True:
                assert pending is not None
                event = await pending
                pending = None
                yield {"event": event.get("type", "message"), "data": json.dumps(event)}
                if event.get("type") == "job_updated" and event["job"]["status"] in JOB_FINISHED:
                    return
                if await request.is_disconnected():
                    return
                pending = asyncio.ensure_future(anext(subscription))
        finally:
            if pending is not None and not pending.done():
                # The task is inside anext(): cancelling it ends the generator (its finally
                # unsubscribes); aclose() now raised "asynchronous generator is already
                # running" and broke the response of every finished job (found by fuzzing).
                pending.cancel()
            else:
                await subscription.aclose()  # type: ignore[attr-defined]

    return EventSourceResponse(stream(), ping=services.settings.api.sse_ping_interval)
