"""GET /metrics: the app's metrics registry in Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from studyrag.auth.policy import ADMIN
from studyrag.observability.metrics import CONTENT_TYPE, Metrics

# Admin only in multi-user mode (a scraper uses an admin key); open in local mode.
router = APIRouter(tags=["metrics"], dependencies=[Depends(ADMIN)])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Every metric family (see docs/operations.md), rendered at this moment."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
