"""GET /health: which backends serve, and whether they answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from studyrag import __version__
from studyrag.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Status of the server and each backend."""
    s = services
    body: dict[str, Any] = {
        "status": "ok",
        "version": __version__,
        "database": s.db.dialect,
        "embeddings": {"provider": s.embedder.provider, "model": s.embedder.model_name},
        "vectors": {"backend": s.vectors.backend},
    }
    if s.chat_model is not None:
        llm = await s.chat_model.health_check()
        body["llm"] = llm
        if llm.get("status") != "ok":
            body["status"] = "degraded"
    return body
