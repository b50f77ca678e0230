"""The Embedder role: text in, unit-length vectors out, plus the tokenizer chunking uses."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Protocol, Self


class Tokenizer(Protocol):
    """Splits text into tokens and says where each token sits in the text."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of every token, in order."""
        ...


class RegexTokenizer:
    """Word-piece-like approximation for embedders that expose no tokenizer (Ollama)."""

    _pattern = re.compile(r"\w{1,6}|[^\w\s]", re.UNICODE)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._pattern.finditer(text)]


class Embedder(ABC):
    """Async embedding backend. Blocking model calls run off the event loop."""

    provider: str = ""
    #: Name recorded on documents, so a model change is visible and reindexable.
    model_name: str = ""
    #: Vector length; known after the model is loaded.
    dimensions: int = 0
    #: Longest input the model reads, in its own tokens; longer text is truncated by it.
    max_tokens: int = 512

    @property
    @abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (or an approximation), for token-sized chunks."""

    @abstractmethod
    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages, batched."""

    @abstractmethod
    async def embed_query(self, text: str) -> list[float]:
        """Embed one search query."""

    async def health_check(self) -> dict[str, Any]:
        """{'status': 'ok'|'unavailable', 'provider', 'model', ...}; never raises."""
        return {
            "status": "ok",
            "provider": self.provider,
            "model": self.model_name,
            "dimensions": self.dimensions,
        }

    async def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Embed several short texts as queries (never waiting behind document batches)."""
        return [await self.embed_query(t) for t in texts]

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model / check the server."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model or the connection."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
