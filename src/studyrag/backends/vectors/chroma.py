"""ChromaVectorStore: PersistentClient in the data dir, or HttpClient for a Chroma server."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio

from studyrag.backends.vectors.base import VectorHit, VectorStore
from studyrag.errors import BackendUnavailable

log = logging.getLogger(__name__)

# Chroma's add() rejects batches above its max_batch_size (~5k); stay well below.
_BATCH = 2000


def collection_name(base: str, model: str) -> str:
    """One collection per embedding model: vectors of different models never mix."""
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", Path(model).name or model).strip("-._")
    name = f"{base}-{slug}"[:120].strip("-._")
    return name if len(name) >= 3 else f"{name}-col"


class ChromaVectorStore(VectorStore):
    """Cosine-space Chroma collection; blocking client calls run in worker threads."""

    def __init__(self, *, path: Path | None = None, url: str = "", collection: str) -> None:
        self.backend = "chroma-http" if url else "chroma"
        self._path = path
        self._url = url
        self._collection_name = collection
        self._client: Any = None
        self._collection: Any = None
        self._limiter = anyio.CapacityLimiter(4)

    @property
    def location(self) -> str:
        """Where the store is, as users may see it: a URL, never a server path."""
        return self._url or "the embedded store (chroma/ in the data directory)"

    @property
    def _hint(self) -> str:
        """What to do when a call fails: the store is a server, or files in the data dir."""
        if self._url:
            return (
                f"Check that the Chroma server at {self._url} is running (STUDYRAG_VECTORS__URL), "
                "then try again; lexical search works meanwhile."
            )
        return "Check that the data directory is writable and its disk has room, then try again."

    async def start(self) -> None:
        if self._collection is None:
            await anyio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        try:
            if self._url:
                parsed = urlparse(self._url.replace("chroma+", "", 1))
                self._client = chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1",
                    port=parsed.port or 8000,
                    ssl=parsed.scheme == "https",
                    settings=chroma_settings,
                )
            else:
                assert self._path is not None
                self._path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(
                    path=str(self._path), settings=chroma_settings
                )
            self._collection = self._client.get_or_create_collection(
                self._collection_name, metadata={"hnsw:space": "cosine"}
            )
        except Exception as exc:  # noqa: BLE001 - chromadb raises many kinds
            raise BackendUnavailable(
                f"The vector store at {self.location} is not available: {exc}",
                hint="Check STUDYRAG_VECTORS__URL (chroma+http://host:port) or that the data "
                "directory is writable.",
            ) from exc

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        await self.start()

        def call() -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise BackendUnavailable(
                    f"Vector store error at {self.location}: {exc}", hint=self._hint
                ) from exc

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def upsert(
        self,
        ids: list[str],
        embeddings: list[list[float]],
        metadatas: list[dict[str, Any]],
    ) -> None:
        for i in range(0, len(ids), _BATCH):
            await self._run(
                self._collection.upsert,
                ids=ids[i : i + _BATCH],
                embeddings=embeddings[i : i + _BATCH],
                metadatas=metadatas[i : i + _BATCH],
            )

    async def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        # Chroma's update() rejects ids it does not hold; keep only the stored ones.
        for i in range(0, len(ids), _BATCH):
            part = ids[i : i + _BATCH]
            held = set((await self._run(self._collection.get, ids=part, include=[]))["ids"])
            keep = [
                (k, m) for k, m in zip(part, metadatas[i : i + _BATCH], strict=True) if k in held
            ]
            if keep:
                await self._run(
                    self._collection.update,
                    ids=[k for k, _ in keep],
                    metadatas=[m for _, m in keep],
                )

    async def query(
        self,
        embedding: list[float],
        *,
        top_k: int,
        where: dict[str, Any] | None = None,
        include_metadata: bool = True,
    ) -> list[VectorHit]:
        # Fetching metadata reads Chroma's SQLite per hit; search only needs ids and scores.
        include = ["metadatas", "distances"] if include_metadata else ["distances"]
        result = await self._run(
            self._collection.query,
            query_embeddings=[embedding],
            n_results=top_k,
            where=where or None,
            include=include,
        )
        ids = result["ids"][0]
        distances = result["distances"][0]
        metas = result["metadatas"][0] if result.get("metadatas") else [{}] * len(ids)
        # Cosine distance d = 1 - cos; report the similarity.
        return [
            VectorHit(id=i, score=1.0 - float(d), metadata=dict(m or {}))
            for i, d, m in zip(ids, distances, metas, strict=True)
        ]

    async def delete(
        self, *, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> None:
        if ids is not None:
            for i in range(0, len(ids), _BATCH):
                await self._run(self._collection.delete, ids=ids[i : i + _BATCH])
        elif where:
            await self._run(self._collection.delete, where=where)

    async def get_ids(self, *, where: dict[str, Any] | None = None) -> list[str]:
        result = await self._run(self._collection.get, where=where or None, include=[])
        return list(result["ids"])

    async def get_vectors(self, ids: list[str]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for i in range(0, len(ids), _BATCH):
            result = await self._run(
                self._collection.get, ids=ids[i : i + _BATCH], include=["embeddings"]
            )
            for key, vector in zip(result["ids"], result["embeddings"], strict=True):
                out[str(key)] = [float(x) for x in vector]
        return out

    async def count(self) -> int:
        return int(await self._run(self._collection.count))

    async def health_check(self) -> dict[str, Any]:
        """Open, answering and counting; the chromadb version (the server's over HTTP)."""
        import chromadb

        report: dict[str, Any] = {"backend": self.backend, "client_version": chromadb.__version__}
        if self._collection is None:
            # Closed (or never opened): a health check must not be what reopens it.
            error = BackendUnavailable(f"The vector store at {self.location} is closed.")
            return {**report, "status": "unavailable", "error": error.to_dict()}
        try:
            if self._url:
                report["server_version"] = await self._run(self._client.get_version)
            report["vectors"] = await self.count()
        except BackendUnavailable as exc:
            return {**report, "status": "unavailable", "error": exc.to_dict()}
        return {**report, "status": "ok"}

    async def aclose(self) -> None:
        # PersistentClient has no close(); dropping the references lets SQLite files close.
        self._collection = None
        self._client = None
