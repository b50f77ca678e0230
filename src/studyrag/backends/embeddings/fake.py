"""FakeEmbedder: hashed bag-of-words vectors, for tests of the layers above the Embedder."""

from __future__ import annotations

import hashlib
import math
import re

from studyrag.backends.embeddings.base import Embedder, RegexTokenizer, Tokenizer


class FakeEmbedder(Embedder):
    """Deterministic, dependency-free; similar words give similar vectors."""

    provider = "fake"

    def __init__(self, dimensions: int = 64) -> None:
        self.model_name = f"fake-{dimensions}"
        self.dimensions = dimensions
        self._tokenizer = RegexTokenizer()

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def _vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dimensions
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
            vec[h % self.dimensions] += 1.0
        norm = math.sqrt(sum(x * x for x in vec)) or 1.0
        return [x / norm for x in vec]

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    async def embed_query(self, text: str) -> list[float]:
        return self._vector(text)
