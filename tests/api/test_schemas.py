"""The public models show every field of the records they stand for."""

from __future__ import annotations

from dataclasses import fields

from studyrag.retrieval.types import SearchResult
from studyrag.schemas.search import SearchResultPublic


def test_search_result_public_has_every_field_of_a_search_result() -> None:
    # A field added to SearchResult but not here would silently vanish from POST /api/search.
    assert list(SearchResultPublic.model_fields) == [f.name for f in fields(SearchResult)]
