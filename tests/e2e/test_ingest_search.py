"""Ingest and search end to end: real MiniLM, real Chroma, real SQLite + FTS5."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fpdf import FPDF
from sqlalchemy import text

from studyrag.config import IngestSettings, Settings
from studyrag.errors import EmptyQuery, InvalidSearchRequest
from studyrag.services import Services, open_services

pytestmark = pytest.mark.slow


def make_pdf(path: Path) -> Path:
    """Three pages; the chlorophyll fact is on page 2, the mitochondria fact on page 3."""
    pdf = FPDF()
    pdf.set_title("Plant Biology Notes")
    pdf.set_author("A. Student")
    pdf.set_font("Helvetica", size=12)
    pages = [
        "Introduction to plant cells. Cells have walls made of cellulose.",
        "Photosynthesis happens in chloroplasts. Chlorophyll absorbs blue and red light "
        "and reflects green light, which is why leaves look green.",
        "Mitochondria are the site of cellular respiration and make ATP for the cell.",
    ]
    for body in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, body)
    pdf.output(str(path))
    return path


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_pdf(folder / "biology.pdf")
    # Each section holds a few sentences: enough to stand alone as a chunk (a section under a
    # quarter of the chunk size joins its neighbour).
    (folder / "history.md").write_text(
        "# European History\n\n## The French Revolution\n\n"
        "The French Revolution began in 1789 with the storming of the Bastille. The Estates "
        "General had been summoned to solve a financial crisis, and the Third Estate declared "
        "itself a National Assembly. The monarchy was abolished in 1792, and the Terror "
        "followed. Napoleon Bonaparte seized power in 1799 and later crowned himself "
        "emperor of the French.\n\n"
        "## The Industrial Revolution\n\n"
        "Steam engines powered the textile mills of Manchester in the nineteenth century. "
        "Coal from northern England fed the engines, and canals and then railways carried "
        "goods to the ports. Workers moved from the countryside into fast-growing towns, "
        "where factory hours were long. Children worked in the mills until laws limited "
        "their hours in the 1830s and 1840s.\n",
        encoding="utf-8",
    )
    (folder / "chemistry.txt").write_text(
        "Water boils at 100 degrees Celsius at sea level.\n\n"
        "Sodium chloride is the chemical name of table salt.\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture
async def services(tmp_path: Path) -> Services:
    async with open_services(Settings(data_dir=tmp_path / "data")) as s:
        yield s  # type: ignore[misc]


async def counts(services: Services, document_id: str) -> tuple[int, int, int]:
    """(SQL chunks, FTS rows, vectors) of one document."""
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
    vec = len(await services.vectors.get_ids(where={"document_id": document_id}))
    return int(sql or 0), int(fts or 0), vec


async def test_folder_ingest_then_search_finds_page_and_section(
    services: Services, tmp_path: Path
) -> None:
    results = await services.pipeline.ingest_paths([write_corpus(tmp_path / "notes")])
    assert {r.filename: r.status for r in results} == {
        "biology.pdf": "completed",
        "chemistry.txt": "completed",
        "history.md": "completed",
    }
    for r in results:
        assert r.chunks > 0
        assert set(r.timings) == {"extract", "chunk", "embed", "store"}
        assert await counts(services, r.document_id or "") == (r.chunks, r.chunks, r.chunks)

    for mode in ("hybrid", "semantic", "lexical"):
        top = (await services.search.search("What does chlorophyll absorb?", mode=mode)).results[0]
        assert top.filename == "biology.pdf", mode
        assert top.page == 2, mode
        assert "Chlorophyll absorbs" in top.text
        assert "<mark>" in top.snippet
        assert top.document["title"] == "Plant Biology Notes"

    top = (await services.search.search("when did the Bastille fall", mode="hybrid")).results[0]
    assert top.filename == "history.md"
    assert top.section == "European History > The French Revolution"
    assert top.page is None
    # Offsets point into the stored extracted text: that is what a citation highlights.
    content = await services.documents.get_content(top.document_id)
    assert content[top.start : top.end] == top.text


async def test_filters_and_grouping(services: Services, tmp_path: Path) -> None:
    results = await services.pipeline.ingest_paths([write_corpus(tmp_path / "notes")])
    ids = {r.filename: r.document_id for r in results}
    from studyrag.retrieval.types import SearchFilters

    only_md = await services.search.search(
        "revolution light water", filters=SearchFilters(file_types=["md"]), top_k=10
    )
    assert only_md.results and {r.filename for r in only_md.results} == {"history.md"}
    only_txt = await services.search.search(
        "revolution light water", filters=SearchFilters(document_ids=[ids["chemistry.txt"]])
    )
    assert {r.filename for r in only_txt.results} == {"chemistry.txt"}
    grouped = await services.search.search(
        "revolution", group_by_document=True, top_k=10, mode="lexical"
    )
    assert len({r.document_id for r in grouped.results}) == len(grouped.results)
    assert grouped.results[0].matches >= 2  # both revolution sections of history.md


async def test_reingest_is_a_noop_that_says_so(services: Services, tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    first = await services.pipeline.ingest_file(folder / "history.md")
    again = await services.pipeline.ingest_file(folder / "history.md")
    assert again.status == "duplicate"
    assert again.document_id == first.document_id
    assert "already ingested" in (again.error or "")
    docs, total = await services.documents.list()
    assert total == 1
    assert await counts(services, first.document_id or "") == (first.chunks,) * 3


async def test_delete_removes_every_chunk_everywhere(services: Services, tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    kept = await services.pipeline.ingest_file(folder / "history.md")
    gone = await services.pipeline.ingest_file(folder / "biology.pdf")
    await services.pipeline.delete_document(gone.document_id or "")
    assert await counts(services, gone.document_id or "") == (0, 0, 0)
    assert await counts(services, kept.document_id or "") == (kept.chunks,) * 3
    hits = await services.search.search("chlorophyll absorbs light", mode="hybrid")
    assert all(r.filename != "biology.pdf" for r in hits.results)
    from studyrag.errors import DocumentNotFound

    with pytest.raises(DocumentNotFound):
        await services.documents.get(gone.document_id or "")


async def test_reindex_recomputes_embeddings(services: Services, tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    r = await services.pipeline.ingest_file(folder / "biology.pdf")
    # Simulate vectors lost or made by another model: reindex must restore them.
    await services.vectors.delete(where={"document_id": r.document_id})
    assert await counts(services, r.document_id or "") == (r.chunks, r.chunks, 0)
    again = await services.pipeline.reindex(r.document_id or "")
    assert again.status == "completed"
    assert await counts(services, r.document_id or "") == (r.chunks,) * 3
    doc = await services.documents.get(r.document_id or "")
    assert doc.embedding_model == services.embedder.model_name
    top = (await services.search.search("chlorophyll", mode="semantic")).results[0]
    assert top.page == 2


async def test_bad_inputs_are_refused_or_recorded_and_the_rest_ingests(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    (folder / "slides.pptx").write_bytes(b"PK\x03\x04 not supported")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ntruncated")
    (folder / "broken.docx").write_bytes(os.urandom(2048))
    big = folder / "huge.md"
    with big.open("wb") as fh:  # sparse: the size check must not read it
        fh.truncate(3 * 1024 * 1024)
    settings = Settings(data_dir=tmp_path / "data", ingest=IngestSettings(max_file_size_mb=2))
    async with open_services(settings) as services:
        results = {r.filename: r for r in await services.pipeline.ingest_paths([folder])}
        codes = {name: r.error_code for name, r in results.items()}
        assert codes == {
            "biology.pdf": None,
            "chemistry.txt": None,
            "history.md": None,
            "slides.pptx": "DOC_001",
            "empty.txt": "DOC_003",
            "binary.txt": "DOC_003",
            "broken.pdf": "DOC_003",
            "broken.docx": "DOC_003",
            "huge.md": "DOC_002",
        }
        # Refused before they were stored (type, size): reported, never kept as documents.
        for name in ("slides.pptx", "huge.md"):
            assert results[name].status == "rejected" and results[name].document_id is None
        listed, _ = await services.documents.list()
        assert not {"slides.pptx", "huge.md"} & {d.filename for d in listed}
        for name, r in results.items():
            if r.error_code and r.status != "rejected":
                assert r.status == "failed" and r.error and len(r.error) > 10, name
                doc = await services.documents.get(r.document_id or "")
                assert (doc.status, doc.error_code) == ("failed", r.error_code)
                assert await counts(services, doc.id) == (0, 0, 0)
        # A second attempt of a failed file replaces its record instead of piling up.
        await services.pipeline.ingest_file(folder / "empty.txt")
        failed, _ = await services.documents.list(status="failed")
        assert sum(1 for d in failed if d.filename == "empty.txt") == 1
        assert "DOC_002" in str(results["huge.md"].error_code)
        assert "2 MB" in (results["huge.md"].error or "")


async def test_empty_query_and_bad_mode(services: Services) -> None:
    with pytest.raises(EmptyQuery) as info:
        await services.search.search("   ")
    assert info.value.error_code == "SEARCH_001"
    with pytest.raises(InvalidSearchRequest):
        await services.search.search("x", mode="fuzzy")


async def test_many_small_files_share_embedding_batches(tmp_path: Path) -> None:
    from studyrag.backends.embeddings.sentence_transformers import SentenceTransformersEmbedder
    from studyrag.config import EmbeddingsSettings

    class CountingEmbedder(SentenceTransformersEmbedder):
        """The real MiniLM, counting how often it is called."""

        calls = 0

        async def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.calls += 1
            return await super().embed_documents(texts)

    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(40):
        (folder / f"note{i:02}.md").write_text(f"# Note {i}\n\nFact number {i} is {i * 7}.\n")
    (folder / "zz-empty.txt").write_text("")
    embedder = CountingEmbedder(EmbeddingsSettings())
    async with open_services(Settings(data_dir=tmp_path / "data"), embedder=embedder) as services:
        results = await services.pipeline.ingest_paths([folder])
        assert [r.status for r in results] == ["completed"] * 40 + ["failed"]
        assert embedder.calls == 1  # 40 notes, one model call
        for r in results[:40]:
            assert await counts(services, r.document_id or "") == (1, 1, 1)
        top = (await services.search.search("fact number 17", mode="lexical")).results[0]
        assert top.filename == "note17.md"


async def test_the_document_name_routes_a_question_to_its_document(
    services: Services, tmp_path: Path
) -> None:
    folder = tmp_path / "filings"
    folder.mkdir()
    body = "Capital expenditures were {n} million dollars, mostly for new factories.\n"
    (folder / "ACME_2022_10K.md").write_text(body.format(n=410))
    (folder / "GLOBEX_2022_10K.md").write_text(body.format(n=975))
    await services.pipeline.ingest_paths([folder])
    for mode in ("lexical", "semantic", "hybrid"):
        top = (await services.search.search("Globex capital expenditures", mode=mode)).results[0]
        assert top.filename == "GLOBEX_2022_10K.md", mode
    # The header is indexed with the chunk, not part of its text or offsets.
    assert top.text == body.format(n=975).strip()
