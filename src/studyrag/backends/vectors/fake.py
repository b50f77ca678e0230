"""InMemoryVectorStore: exact cosine search in a dict, for tests of the layers above."""

from __future__ import annotations

import math
from typing import Any

from studyrag.backends.vectors.base import VectorHit, VectorStore


def _matches(meta: dict[str, Any], where: dict[str, Any] | None) -> bool:
    if not where:
        return True
    for key, cond in where.items():
        if key == "$and":
            if not all(_matches(meta, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(_matches(meta, c) for c in cond):
                return False
            continue
        value = meta.get(key)
        if isinstance(cond, dict):
            for op, arg in cond.items():
                if op == "$eq" and value != arg:
                    return False
                if op == "$ne" and value == arg:
                    return False
                if op == "$in" and value not in arg:
                    return False
                if op == "$nin" and value in arg:
                    return False
        elif value != cond:
            return False
    return True


class InMemoryVectorStore(VectorStore):
    """Brute-force cosine; same semantics as Chroma for the operators StudyRAG uses."""

    backend = "memory"

    def __init__(self) -> None:
        self._rows: dict[str, tuple[list[float], dict[str, Any]]] = {}

    async def upsert(
        self, ids: list[str], embeddings: list[list[float]], metadatas: list[dict[str, Any]]
    ) -> None:
        for i, e, m in zip(ids, embeddings, metadatas, strict=True):
            self._rows[i] = (list(e), dict(m))

    async def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        for i, m in zip(ids, metadatas, strict=True):
            if i in self._rows:
                self._rows[i] = (self._rows[i][0], dict(m))

    async def query(
        self,
        embedding: list[float],
        *,
        top_k: int,
        where: dict[str, Any] | None = None,
        include_metadata: bool = True,
    ) -> list[VectorHit]:
        qn = math.sqrt(sum(x * x for x in embedding)) or 1.0
        hits = []
        for i, (vec, meta) in self._rows.items():
            if not _matches(meta, where):
                continue
            vn = math.sqrt(sum(x * x for x in vec)) or 1.0
            score = sum(a * b for a, b in zip(embedding, vec, strict=True)) / (qn * vn)
            hits.append(VectorHit(i, score, dict(meta) if include_metadata else {}))
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:top_k]

    async def delete(
        self, *, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> None:
        if ids is not None:
            for i in ids:
                self._rows.pop(i, None)
        elif where:
            for i in [i for i, (_, m) in self._rows.items() if _matches(m, where)]:
                del self._rows[i]

    async def get_ids(self, *, where: dict[str, Any] | None = None) -> list[str]:
        return [i for i, (_, m) in self._rows.items() if _matches(m, where)]

    async def get_vectors(self, ids: list[str]) -> dict[str, list[float]]:
        return {i: list(self._rows[i][0]) for i in ids if i in self._rows}

    async def count(self) -> int:
        return len(self._rows)
