"""Pick a backend by name or URL scheme; vendor modules are imported only when chosen."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from studyrag.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from studyrag.backends.broker.base import Broker
    from studyrag.backends.embeddings.base import Embedder
    from studyrag.backends.llm.base import ChatModel
    from studyrag.backends.vectors.base import VectorStore
    from studyrag.config import Settings
    from studyrag.jobs.base import JobRunner

log = logging.getLogger(__name__)


def build_embedder(settings: Settings) -> Embedder:
    """sentence-transformers (default) or ollama."""
    provider = settings.embeddings.provider
    if provider == "sentence-transformers":
        from studyrag.backends.embeddings.sentence_transformers import (
            SentenceTransformersEmbedder,
        )

        return SentenceTransformersEmbedder(settings.embeddings)
    if provider == "ollama":
        from studyrag.backends.embeddings.ollama import OllamaEmbedder

        return OllamaEmbedder(settings.embeddings)
    raise ConfigError(f"Unknown embeddings provider {provider!r}.")


def build_vector_store(settings: Settings, *, model_name: str) -> VectorStore:
    """Chroma PersistentClient in the data dir, or `chroma+http://host:port`."""
    from studyrag.backends.vectors.chroma import ChromaVectorStore, collection_name

    url = settings.vectors.url
    collection = collection_name(settings.vectors.collection, model_name)
    if not url:
        return ChromaVectorStore(path=settings.data_dir / "chroma", collection=collection)
    if url.startswith(("chroma+http://", "chroma+https://", "http://", "https://")):
        return ChromaVectorStore(url=url, collection=collection)
    raise ConfigError(
        f"Unsupported vector store URL {url!r}.",
        hint="Leave STUDYRAG_VECTORS__URL empty for the embedded store, or use "
        "chroma+http://host:port for a Chroma server.",
    )


async def build_chat_model(settings: Settings) -> ChatModel:
    """llamacpp (default), ollama, openai or auto (which probes Ollama without blocking)."""
    from studyrag.backends.llm.auto import abuild_chat_model

    return await abuild_chat_model(settings.llm)


def build_broker(settings: Settings) -> Broker:
    """In-process by default; `redis://` for fan-out across workers."""
    url = settings.broker.url
    if not url or url == "memory://":
        from studyrag.backends.broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from studyrag.backends.broker.redis import RedisBroker
        except ModuleNotFoundError as exc:
            raise MissingExtraError("The Redis broker", "redis") from exc
        return RedisBroker(url, namespace=settings.broker.namespace)
    raise ConfigError(f"Unsupported broker URL {url!r}.", hint="Use redis://host:port/0.")


def build_job_runner(settings: Settings) -> JobRunner:
    """In-process on SQLite; procrastinate (a queue in PostgreSQL) on PostgreSQL ("auto")."""
    choice = settings.jobs.runner
    postgres = settings.database_url.startswith(("postgresql", "postgres"))
    if choice == "auto":
        choice = "procrastinate" if postgres else "inprocess"
        if postgres:
            try:
                import procrastinate  # noqa: F401
            except ModuleNotFoundError:
                log.warning(
                    "jobs run on the worker that queued them: install 'studyrag[postgres]' "
                    "so that any worker takes any job (procrastinate)"
                )
                choice = "inprocess"
    if choice == "inprocess":
        from studyrag.jobs.inprocess import InProcessJobRunner

        return InProcessJobRunner(workers=settings.ingest.job_workers)
    if not postgres:
        raise ConfigError(
            "The procrastinate job runner keeps its queue in PostgreSQL.",
            hint="Set STUDYRAG_DATABASE__URL=postgresql+asyncpg://…, or "
            "STUDYRAG_JOBS__RUNNER=inprocess (or auto) on SQLite.",
        )
    try:
        from studyrag.jobs.procrastinate import ProcrastinateJobRunner
    except ModuleNotFoundError as exc:
        raise MissingExtraError("The procrastinate job runner", "postgres") from exc
    return ProcrastinateJobRunner(
        settings.database_url, settings.jobs, concurrency=settings.ingest.job_workers
    )
