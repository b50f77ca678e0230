"""OllamaEmbedder: vectors from an Ollama server's /api/embed."""

from __future__ import annotations

import math
from typing import Any

from studyrag.backends.embeddings.base import Embedder, RegexTokenizer, Tokenizer
from studyrag.config import EmbeddingsSettings
from studyrag.errors import BackendUnavailable, ConfigError


class OllamaEmbedder(Embedder):
    """Batched embeddings from Ollama; the tokenizer is an approximation (none is local)."""

    provider = "ollama"

    def __init__(self, settings: EmbeddingsSettings) -> None:
        import ollama

        self.settings = settings
        self.model_name = f"ollama:{settings.model}"
        self.max_tokens = settings.max_tokens
        self._client = ollama.AsyncClient(host=settings.ollama_url, timeout=60)
        self._tokenizer = RegexTokenizer()

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def start(self) -> None:
        if not self.dimensions:
            self.dimensions = len(await self.embed_query("dimension probe"))

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        import httpx
        import ollama

        try:
            response: Any = await self._client.embed(model=self.settings.model, input=texts)
        except (httpx.HTTPError, ConnectionError) as exc:
            raise BackendUnavailable(
                f"Ollama is not reachable at {self.settings.ollama_url}: {exc}",
                hint="Start it with `ollama serve` or set "
                "STUDYRAG_EMBEDDINGS__PROVIDER=sentence-transformers.",
            ) from exc
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise ConfigError(
                    f"Ollama has no embedding model {self.settings.model!r}.",
                    hint=f"Pull it with `ollama pull {self.settings.model}`.",
                ) from exc
            raise BackendUnavailable(f"Ollama embedding failed: {exc.error}") from exc
        return [_normalise(list(v)) for v in response["embeddings"]]

    async def health_check(self) -> dict[str, Any]:
        """Whether Ollama embeds with the configured model right now; never raises."""
        report = await super().health_check()
        report["url"] = self.settings.ollama_url
        try:
            await self.embed_query("health check")
        except (BackendUnavailable, ConfigError) as exc:
            return {**report, "status": "unavailable", "error": exc.to_dict()}
        return report

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        size = self.settings.batch_size
        for i in range(0, len(texts), size):
            out.extend(await self._embed(texts[i : i + size]))
        return out

    async def embed_query(self, text: str) -> list[float]:
        return (await self._embed([text]))[0]

    async def embed_queries(self, texts: list[str]) -> list[list[float]]:
        return await self.embed_documents(texts)  # a server has no separate query path

    async def aclose(self) -> None:
        client = getattr(self._client, "_client", None)
        if client is not None:
            await client.aclose()


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
