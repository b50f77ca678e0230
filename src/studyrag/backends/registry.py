"""Pick a backend by name or URL scheme; vendor modules are imported only when chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from studyrag.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from studyrag.backends.broker.base import Broker
    from studyrag.backends.embeddings.base import Embedder
    from studyrag.backends.llm.base import ChatModel
    from studyrag.backends.vectors.base import VectorStore
    from studyrag.config import Settings


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
