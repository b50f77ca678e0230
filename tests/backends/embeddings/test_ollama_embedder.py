"""OllamaEmbedder with the real `ollama` client against an Ollama-protocol server on a socket."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from studyrag.backends.embeddings.ollama import OllamaEmbedder
from studyrag.config import EmbeddingsSettings, Settings
from studyrag.errors import BackendUnavailable, ConfigError
from studyrag.services import open_services
from tests.backends.llm.ollama_server import embed_text, running_ollama_server
from tests.conftest import free_port


def settings(url: str, **kw: object) -> EmbeddingsSettings:
    return EmbeddingsSettings(
        provider="ollama",
        model="nomic-embed-text",
        ollama_url=url,
        **kw,  # type: ignore[arg-type]
    )


async def test_batches_are_normalised_and_match_the_server() -> None:
    with running_ollama_server(embed_dims=32) as url:
        embedder = OllamaEmbedder(settings(url, batch_size=2))
        async with embedder:
            assert embedder.dimensions == 32
            texts = ["chlorophyll absorbs light", "mitochondria make ATP", "salt", "water"]
            vectors = await embedder.embed_documents(texts)
            assert len(vectors) == 4
            for text, vec in zip(texts, vectors, strict=True):
                assert math.isclose(sum(x * x for x in vec), 1.0, rel_tol=1e-6)
                expected = embed_text(text, 32)
                norm = math.sqrt(sum(x * x for x in expected)) or 1.0
                assert vec == pytest.approx([x / norm for x in expected], abs=1e-6)
            assert embedder.model_name == "ollama:nomic-embed-text"


async def test_unreachable_and_missing_model_are_clear_errors() -> None:
    embedder = OllamaEmbedder(settings(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(BackendUnavailable) as down:
        await embedder.embed_query("x")
    assert down.value.error_code == "SEARCH_003" and "ollama serve" in down.value.hint
    await embedder.aclose()
    with running_ollama_server(fail_with=(404, "model 'nomic-embed-text' not found")) as url:
        embedder = OllamaEmbedder(settings(url))
        with pytest.raises(ConfigError) as missing:
            await embedder.embed_query("x")
        assert "ollama pull nomic-embed-text" in missing.value.hint
        await embedder.aclose()


async def test_ingest_and_search_with_ollama_embeddings(tmp_path: Path) -> None:
    from tests.e2e.test_ingest_search import write_corpus

    with running_ollama_server(embed_dims=512) as url:
        cfg = Settings(data_dir=tmp_path / "data", embeddings=settings(url))
        async with open_services(cfg) as services:
            results = await services.pipeline.ingest_paths([write_corpus(tmp_path / "notes")])
            assert {r.status for r in results} == {"completed"}
            doc = await services.documents.get(results[0].document_id or "")
            assert doc.embedding_model == "ollama:nomic-embed-text"
            query = "French Revolution storming of the Bastille 1789"
            top = (await services.search.search(query, mode="semantic")).results[0]
            assert top.filename == "history.md"
