"""GET /health: each backend's status, models and versions; 503 when a required one is down."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from studyrag.api.deps import ServicesDep
from studyrag.auth.policy import PUBLIC
from studyrag.observability.health import health_report

router = APIRouter(tags=["health"], dependencies=[Depends(PUBLIC)])


@router.get(
    "/health",
    response_class=JSONResponse,
    responses={503: {"description": "unavailable: a required backend is down (the same report)"}},
)
async def health(services: ServicesDep) -> JSONResponse:
    """ok, degraded (the chat model is down) or unavailable (503: a required backend is)."""
    status, body = await health_report(services)
    return JSONResponse(body, status_code=status)
