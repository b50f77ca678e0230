"""Consistency under concurrency and failure: ownership, conditional completion, dedupe."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from studyrag.backends.embeddings.sentence_transformers import SentenceTransformersEmbedder
from studyrag.config import EmbeddingsSettings, Settings, VectorSettings
from studyrag.db.models import Document
from studyrag.db.repo import COMPLETED, DELETING, FAILED, PROCESSING, QUEUED
from studyrag.errors import DocumentBusy
from studyrag.ingest.ownership import owner_gone, process_owner
from studyrag.services import Services, open_services
from tests.contracts.test_vector_store import running_chroma
from tests.e2e.test_ingest_search import counts, write_corpus

pytestmark = pytest.mark.slow


async def _set(services: Services, doc_id: str, **values: object) -> None:
    async with services.db.session() as s:
        await s.execute(update(Document).where(Document.id == doc_id).values(**values))


async def test_reconcile_repairs_only_rows_whose_owner_is_gone(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    settings = Settings(data_dir=tmp_path / "data")
    async with open_services(settings) as services:
        results = {r.filename: r for r in await services.pipeline.ingest_paths([folder])}
        ids = {name: r.document_id or "" for name, r in results.items()}
        host = socket.gethostname()
        old = datetime.now(UTC) - timedelta(hours=3)
        # Live owner (this process): in flight elsewhere in this process, hands off.
        await _set(services, ids["biology.pdf"], status=PROCESSING, owner=process_owner())
        # Dead owner on this host: a crash; its chunks must go.
        await _set(services, ids["history.md"], status=PROCESSING, owner=f"{host}:999999999:1")
        # A delete interrupted by a crash: finish it.
        await _set(services, ids["chemistry.txt"], status=DELETING, owner=f"{host}:999999999:1")
    async with open_services(settings) as services:
        pdf = await services.documents.get(ids["biology.pdf"])
        assert pdf.status == PROCESSING
        assert await counts(services, pdf.id) == (pdf.chunk_count,) * 3
        # Its original is kept: back in the queue with nothing half-indexed left.
        md = await services.documents.get(ids["history.md"])
        assert (md.status, md.step, md.error_code) == (QUEUED, "queued", None)
        assert await counts(services, md.id) == (0, 0, 0)
        assert await counts(services, ids["chemistry.txt"]) == (0, 0, 0)
        docs, _ = await services.documents.list()
        assert ids["chemistry.txt"] not in {d.id for d in docs}
        # Without its original a crashed ingestion cannot resume: it fails, saying so.
        await _set(services, md.id, status=PROCESSING, owner=f"{host}:999999999:1")
        services.originals.path(md.sha256).unlink()
    async with open_services(settings) as services:
        md = await services.documents.get(ids["history.md"])
        assert (md.status, md.error_code) == (FAILED, "DOC_005")
    assert not owner_gone(process_owner(), None)
    assert owner_gone("elsewhere:1:1", old)
    assert not owner_gone("elsewhere:1:1", datetime.now(UTC))


async def test_a_document_reset_while_ingesting_does_not_come_back(tmp_path: Path) -> None:
    """Another process repairs (or a user deletes) the row mid-ingestion: nothing revives it."""

    class Interfering(SentenceTransformersEmbedder):
        services: Services | None = None

        async def embed_documents(self, texts: list[str]) -> list[list[float]]:
            vectors = await super().embed_documents(texts)
            assert self.services is not None
            docs, _ = await self.services.documents.list(status=PROCESSING)
            for d in docs:  # what reconcile() in another process did before ownership
                await _set(self.services, d.id, status=FAILED, error_code="DOC_005")
            return vectors

    embedder = Interfering(EmbeddingsSettings())
    async with open_services(Settings(data_dir=tmp_path / "data"), embedder=embedder) as s:
        embedder.services = s
        result = await s.pipeline.ingest_file(write_corpus(tmp_path / "notes") / "history.md")
        assert result.status == "failed"
        assert "deleted or reset while it was being ingested" in (result.error or "")
        assert await counts(s, result.document_id or "") == (0, 0, 0)
        assert await s.vectors.count() == 0


async def test_copies_in_one_folder_are_ingested_once(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    (folder / "history copy.md").write_bytes((folder / "history.md").read_bytes())
    async with open_services(Settings(data_dir=tmp_path / "data")) as services:
        results = {r.filename: r for r in await services.pipeline.ingest_paths([folder])}
        original, copy = results["history.md"], results["history copy.md"]
        assert {original.status, copy.status} == {"completed", "duplicate"}
        assert original.document_id == copy.document_id
        hits = await services.search.search("Bastille", mode="lexical", top_k=10)
        assert len([r for r in hits.results if "Bastille" in r.text]) == 1


async def test_delete_and_reindex_refuse_unfinished_documents(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    async with open_services(Settings(data_dir=tmp_path / "data")) as services:
        done = await services.pipeline.ingest_file(folder / "history.md")
        await _set(services, done.document_id or "", status=PROCESSING, owner=process_owner())
        with pytest.raises(DocumentBusy) as info:
            await services.pipeline.delete_document(done.document_id or "")
        assert info.value.status_code == 409
        with pytest.raises(DocumentBusy):
            await services.pipeline.reindex(done.document_id or "")
        (folder / "empty.txt").write_text("")
        failed = await services.pipeline.ingest_file(folder / "empty.txt")
        with pytest.raises(DocumentBusy):
            await services.pipeline.reindex(failed.document_id or "")
        doc = await services.documents.get(failed.document_id or "")
        assert doc.error_code == "DOC_003"  # the original reason is kept
        # A row whose owner died can be deleted without waiting for a restart.
        await _set(
            services,
            done.document_id or "",
            owner="gone:1:1",
            updated_at=datetime.now(UTC) - timedelta(hours=2),
        )
        await services.pipeline.delete_document(done.document_id or "")
        assert await counts(services, done.document_id or "") == (0, 0, 0)
        grouped = await services.search.search("zzzqqq", group_by_document=True, mode="lexical")
        assert grouped.results == []


async def test_vector_server_dying_mid_folder_fails_files_cleanly(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    with running_chroma(tmp_path / "chroma") as (url, proc):
        settings = Settings(data_dir=tmp_path / "data", vectors=VectorSettings(url=url))
        async with open_services(settings) as services:
            first = await services.pipeline.ingest_file(folder / "history.md")
            assert first.status == "completed"
            proc.kill()
            proc.wait(10)
            results = await services.pipeline.ingest_paths([folder])
            by_name = {r.filename: r for r in results}
            assert by_name["history.md"].status == "duplicate"
            for name in ("biology.pdf", "chemistry.txt"):
                r = by_name[name]
                assert (r.status, r.error_code) == ("failed", "SEARCH_003"), name
                assert "/" not in (r.error or "").replace("chroma+http://", "")
                doc = await services.documents.get(r.document_id or "")
                assert doc.status == FAILED
                sql, fts, _ = await counts_sql(services, doc.id)
                assert (sql, fts) == (0, 0)
            kept = await services.documents.get(first.document_id or "")
            assert kept.status == COMPLETED


async def counts_sql(services: Services, document_id: str) -> tuple[int, int, None]:
    from sqlalchemy import text

    async with services.db.session() as s:
        sql = await s.scalar(
            text("SELECT count(*) FROM chunks WHERE document_id = :d"), {"d": document_id}
        )
        fts = await s.scalar(
            text(
                "SELECT count(*) FROM chunks_fts WHERE rowid IN "
                "(SELECT id FROM chunks WHERE document_id = :d)"
            ),
            {"d": document_id},
        )
    return int(sql or 0), int(fts or 0), None


async def test_a_stop_landing_as_a_document_completes_keeps_it_whole(tmp_path: Path) -> None:
    """Ctrl-C or shutdown arriving just after the status flip has committed (while its
    session is still being closed) must not roll back the completed document's chunks."""
    import asyncio

    folder = write_corpus(tmp_path / "notes")
    settings = Settings(data_dir=tmp_path / "data")
    async with open_services(settings) as services:
        repo = services.pipeline.repo
        real = repo.set_status
        committed = asyncio.Event()

        async def slow_after_commit(document_id: str, status: str, **kw: object) -> bool:
            changed = await real(document_id, status, **kw)  # type: ignore[arg-type]
            if status == COMPLETED:
                committed.set()
                await asyncio.sleep(2)  # the window where a stop lands
            return changed

        repo.set_status = slow_after_commit  # type: ignore[method-assign]
        reported: list[str] = []
        work = asyncio.create_task(
            services.pipeline.ingest_paths(
                [folder / "history.md"], progress=lambda p: reported.append(p.step)
            )
        )
        await asyncio.wait_for(committed.wait(), 120)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        repo.set_status = real  # type: ignore[method-assign]
        (doc,), _ = await services.documents.list()
        assert doc.status == COMPLETED
        assert doc.chunk_count > 0
        assert await counts(services, doc.id) == (doc.chunk_count,) * 3
        assert reported[-1] == "completed"
