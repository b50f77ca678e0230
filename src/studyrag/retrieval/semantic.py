"""Semantic search: the query embedding against the vector store."""

from __future__ import annotations

from typing import Any

from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.vectors.base import VectorStore
from studyrag.retrieval.types import Candidate, SearchFilters


def vector_filter(filters: SearchFilters | None) -> dict[str, Any] | None:
    """Chroma `where` for the filters (notebook_id, document_id, file_type on every vector)."""
    if filters is None or filters.empty:
        return None
    clauses: list[dict[str, Any]] = []
    if filters.notebook_id:
        clauses.append({"notebook_id": filters.notebook_id})
    if filters.document_ids:
        clauses.append({"document_id": {"$in": list(filters.document_ids)}})
    if filters.file_types:
        clauses.append({"file_type": {"$in": list(filters.file_types)}})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class SemanticIndex:
    """Cosine similarity between the query and chunk vectors."""

    def __init__(self, embedder: Embedder, vectors: VectorStore) -> None:
        self.embedder = embedder
        self.vectors = vectors

    def use(self, embedder: Embedder, vectors: VectorStore) -> None:
        """Answer from this model's vectors from now on (a search in flight keeps its own)."""
        self.embedder, self.vectors = embedder, vectors

    async def search(
        self,
        query: str,
        *,
        top_k: int,
        filters: SearchFilters | None = None,
        query_vector: list[float] | None = None,
    ) -> list[Candidate]:
        """Best chunks by cosine similarity, best first."""
        # Both read at once: a model switch swaps them together, never between the two.
        embedder, store = self.embedder, self.vectors
        vector = query_vector or await embedder.embed_query(query)
        hits = await store.query(
            vector, top_k=top_k, where=vector_filter(filters), include_metadata=False
        )
        return [Candidate(int(h.id), h.score) for h in hits]
