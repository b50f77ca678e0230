"""Search: the request body of POST /api/search, its filters, and the ranked passages shown."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from studyrag.retrieval.search import MAX_FILTER_DOCUMENTS, MAX_FILTER_FILE_TYPES, MAX_TOP_K
from studyrag.retrieval.types import SearchFilters, SearchMode
from studyrag.schemas.base import PublicModel

MAX_QUERY_CHARS = 2000


class SearchFiltersIn(BaseModel):
    """Restrict retrieval to some documents or file types (search and chat alike)."""

    model_config = ConfigDict(extra="forbid")

    document_ids: list[str] | None = Field(default=None, max_length=MAX_FILTER_DOCUMENTS)
    file_types: list[str] | None = Field(default=None, max_length=MAX_FILTER_FILE_TYPES)

    def to_search(self) -> SearchFilters:
        """The retrieval layer's filter object."""
        return SearchFilters(document_ids=self.document_ids, file_types=self.file_types)


class SearchRequest(BaseModel):
    """POST /api/search."""

    query: str = Field(max_length=MAX_QUERY_CHARS)
    # The notebook searched; the default notebook when absent.
    notebook_id: str | None = Field(default=None, max_length=64)
    mode: SearchMode | None = None
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K)
    # Far wider than any score of any mode (cosine, BM25, fused): only absurd values are refused.
    min_score: float | None = Field(default=None, ge=-1e6, le=1e6, allow_inf_nan=False)
    filters: SearchFiltersIn | None = None
    group_by_document: bool = Field(default=False, strict=True)


class SearchResultPublic(PublicModel):
    """One ranked passage: where it is, how it scored, and a <mark>-highlighted snippet."""

    rank: int
    score: float
    chunk_id: int
    document_id: str
    filename: str
    file_type: str
    page: int | None
    section: str
    start: int
    end: int
    text: str
    snippet: str
    scores: dict[str, float] = Field(default_factory=dict)
    document: dict[str, Any] = Field(default_factory=dict)
    # With group_by_document: how many of the document's passages matched.
    matches: int = 1
    notebook_id: str = ""


class SearchResponsePublic(PublicModel):
    """POST /api/search: the passages and how long each step took (milliseconds)."""

    query: str
    mode: str
    results: list[SearchResultPublic]
    timings: dict[str, float] = Field(default_factory=dict)
