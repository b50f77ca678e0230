"""POST /api/search: semantic, lexical or hybrid search."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from studyrag.api.deps import ServicesDep
from studyrag.retrieval.types import SearchFilters

router = APIRouter(prefix="/api", tags=["search"])


class SearchFiltersIn(BaseModel):
    document_ids: list[str] | None = None
    file_types: list[str] | None = None


class SearchRequest(BaseModel):
    query: str = Field(max_length=2000)
    # The notebook searched; the default notebook when absent.
    notebook_id: str | None = Field(default=None, max_length=64)
    mode: Literal["hybrid", "semantic", "lexical"] | None = None
    top_k: int | None = Field(default=None, ge=1, le=200)
    min_score: float | None = None
    filters: SearchFiltersIn | None = None
    group_by_document: bool = False


@router.post("/search")
async def search(body: SearchRequest, services: ServicesDep) -> dict[str, Any]:
    """Ranked passages with document, page, section, offsets, score and a snippet."""
    notebook_id = await services.notebooks.resolve_id(body.notebook_id)
    filters = SearchFilters(**(body.filters.model_dump() if body.filters else {}))
    filters.notebook_id = notebook_id
    response = await services.search.search(
        body.query,
        mode=body.mode,
        top_k=body.top_k,
        min_score=body.min_score,
        filters=filters,
        group_by_document=body.group_by_document,
    )
    return response.to_dict()
