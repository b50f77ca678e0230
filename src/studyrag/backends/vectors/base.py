"""The VectorStore role: chunk vectors keyed by chunk id, cosine similarity."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Self


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: str
    #: Cosine similarity in [-1, 1] (1 = same direction).
    score: float
    metadata: dict[str, Any]


class VectorStore(ABC):
    """Async vector index. `where` filters use Chroma's operators ($eq, $in, $and)."""

    backend: str = ""

    @abstractmethod
    async def upsert(
        self,
        ids: list[str],
        embeddings: list[list[float]],
        metadatas: list[dict[str, Any]],
    ) -> None:
        """Add or replace vectors."""

    @abstractmethod
    async def query(
        self,
        embedding: list[float],
        *,
        top_k: int,
        where: dict[str, Any] | None = None,
        include_metadata: bool = True,
    ) -> list[VectorHit]:
        """Nearest neighbours, best first (metadata empty when not asked for: it costs)."""

    @abstractmethod
    async def delete(
        self, *, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> None:
        """Remove vectors by id or by metadata filter."""

    @abstractmethod
    async def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Replace the metadata of stored vectors (ids not stored are ignored)."""

    @abstractmethod
    async def get_ids(self, *, where: dict[str, Any] | None = None) -> list[str]:
        """Ids of the stored vectors matching `where` (all if None)."""

    @abstractmethod
    async def get_vectors(self, ids: list[str]) -> dict[str, list[float]]:
        """The stored vectors of these ids (ids not stored are left out)."""

    @abstractmethod
    async def count(self) -> int:
        """Number of stored vectors."""

    async def health_check(self) -> dict[str, Any]:
        """{'status': 'ok'|'unavailable', 'backend', 'vectors', ...}; never raises."""
        from studyrag.errors import StudyRAGError

        report: dict[str, Any] = {"backend": self.backend}
        try:
            report["vectors"] = await self.count()
        except StudyRAGError as exc:
            return {**report, "status": "unavailable", "error": exc.to_dict()}
        return {**report, "status": "ok"}

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open the connection / collection."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close the connection."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
