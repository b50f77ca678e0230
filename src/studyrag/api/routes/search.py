"""POST /api/search: semantic, lexical or hybrid search in one notebook."""

from __future__ import annotations

from fastapi import APIRouter

from studyrag.api.deps import AccessDep, ReadDep, ServicesDep
from studyrag.retrieval.types import SearchFilters
from studyrag.schemas.search import SearchRequest, SearchResponsePublic

router = APIRouter(prefix="/api", tags=["search"])


@router.post("/search")
async def search(
    body: SearchRequest, services: ServicesDep, principal: ReadDep, access: AccessDep
) -> SearchResponsePublic:
    """Ranked passages with document, page, section, offsets, score and a snippet."""
    filters = body.filters.to_search() if body.filters else SearchFilters()
    filters.notebook_id = await access.resolve_notebook(principal, body.notebook_id)
    response = await services.search.search(
        body.query,
        mode=body.mode,
        top_k=body.top_k,
        min_score=body.min_score,
        filters=filters,
        group_by_document=body.group_by_document,
    )
    return SearchResponsePublic.model_validate(response.to_dict())
