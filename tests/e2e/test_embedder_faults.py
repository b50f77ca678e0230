"""The embedder failing in the middle of a folder's ingestion.

The embedder is the real OllamaEmbedder (the real `ollama` client) against the
Ollama-protocol server of tests/backends/llm/ollama_server.py on a socket, which answers
500 "llama runner process has terminated" for the batches that hold one document's second
half: the failure lands after that document's first batches were embedded, with a whole
document before it and one after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from studyrag.config import EmbeddingsSettings, IngestSettings, Settings
from studyrag.db.repo import COMPLETED, FAILED
from studyrag.ingest.pipeline import EMBED_BATCH
from studyrag.services import Services, open_services
from tests.backends.llm.ollama_server import OllamaTestServer
from tests.e2e.test_ingest_search import counts

pytestmark = pytest.mark.slow

CHUNK = 16  # tokens per chunk: each document below is several embedding batches alone
POISON = "zebrafinch"  # only in the second half of the middle document


def notes(topic: str, sentences: int, tail: str = "") -> str:
    body = [
        f"Fact {i} about {topic}: observation {i} was recorded in week {i % 12} of the course."
        for i in range(sentences)
    ]
    half = sentences // 2
    return "\n\n".join([*body[:half], *(f"{s} {tail}" if tail else s for s in body[half:])])


async def assert_nothing_half_indexed(services: Services) -> None:
    """Completed documents are whole in SQL, FTS and vectors; the others are nowhere."""
    docs, _ = await services.documents.list(limit=100)
    for d in docs:
        expected = d.chunk_count if d.status == COMPLETED else 0
        assert await counts(services, d.id) == (expected,) * 3, d.filename
    completed = sum(d.chunk_count for d in docs if d.status == COMPLETED)
    async with services.db.session() as s:
        rows = await s.execute(
            text("SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM chunks_fts)")
        )
        assert tuple(rows.one()) == (completed, completed)
    assert await services.vectors.count() == completed


async def test_embedder_failing_mid_folder_fails_only_its_documents(tmp_path: Path) -> None:
    folder = tmp_path / "course"
    folder.mkdir()
    (folder / "a-genetics.md").write_text(notes("genetics", 400))
    (folder / "b-ecology.md").write_text(notes("ecology", 400, tail=POISON))
    (folder / "c-anatomy.md").write_text(notes("anatomy", 400))
    with OllamaTestServer(embed_dims=32) as ollama:
        settings = Settings(
            data_dir=tmp_path / "data",
            embeddings=EmbeddingsSettings(
                provider="ollama", model="nomic-embed-text", ollama_url=ollama.url
            ),
            ingest=IngestSettings(chunk_size=CHUNK, chunk_overlap=0),
        )
        async with open_services(settings) as services:
            ollama.behaviour.fail_embed_containing = POISON
            results = {r.filename: r for r in await services.pipeline.ingest_paths([folder])}
            assert ollama.failed_embeds == 1, "the failure stops the document at once"
            a, b, c = (results[n] for n in ("a-genetics.md", "b-ecology.md", "c-anatomy.md"))
            # Each document is an embedding batch of its own (the pipeline batches small
            # documents together, and one failure then fails the whole batch).
            assert a.chunks > EMBED_BATCH and c.chunks > EMBED_BATCH, (a.chunks, c.chunks)
            assert (a.status, c.status) == (COMPLETED, COMPLETED)
            assert (b.status, b.error_code) == (FAILED, "SEARCH_003")
            assert b.error == "Ollama embedding failed: llama runner process has terminated"
            failed = await services.documents.get(b.document_id or "")
            assert (failed.status, failed.step, failed.error_code) == (
                FAILED,
                "failed",
                "SEARCH_003",
            )
            assert failed.error == b.error and failed.chunk_count == 0
            await assert_nothing_half_indexed(services)
            hits = await services.search.search("ecology observation", mode="lexical", top_k=5)
            assert hits.results and {h.filename for h in hits.results} <= {
                "a-genetics.md",
                "c-anatomy.md",
            }

            # The embedder is back: retrying the failed document completes it.
            ollama.behaviour.fail_embed_containing = None
            await services.pipeline.requeue(failed.id, job_id=None)
            (again,) = await services.pipeline.process([failed.id])
            assert again.status == COMPLETED and again.chunks > EMBED_BATCH, again
            await assert_nothing_half_indexed(services)
            hits = await services.search.search(POISON, mode="lexical", top_k=3)
            assert hits.results and hits.results[0].filename == "b-ecology.md"
