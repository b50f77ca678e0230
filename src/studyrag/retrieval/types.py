"""Search requests and results shared by the retrieval modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SearchMode = Literal["hybrid", "semantic", "lexical"]


@dataclass(slots=True)
class SearchFilters:
    """What a search may return: one notebook, and in it some documents or file types."""

    document_ids: list[str] | None = None
    file_types: list[str] | None = None
    notebook_id: str | None = None

    @property
    def empty(self) -> bool:
        return not self.document_ids and not self.file_types and not self.notebook_id


@dataclass(slots=True)
class Candidate:
    """A chunk id with the score one mode gave it."""

    chunk_id: int
    score: float


@dataclass(slots=True)
class SearchResult:
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
    scores: dict[str, float] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict)
    matches: int = 1
    notebook_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
