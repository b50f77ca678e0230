"""Ingestion hardened against hostile files and failing stores (issue 12 defects): zip bombs,
a huge word without spaces, a delete that failed halfway, failed documents piling up."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from studyrag.config import IngestSettings, Settings, VectorSettings
from studyrag.db.repo import DELETING, FAILED
from studyrag.errors import DocumentNotFound, StudyRAGError
from studyrag.ingest.chunking import MAX_TOKEN_CHARS
from studyrag.services import open_services
from tests.contracts.test_vector_store import running_chroma
from tests.e2e.test_ingest_search import counts, write_corpus
from tests.ingest.fixtures import make_docx

pytestmark = pytest.mark.slow


def _bomb(source: Path, target: Path, padding: int) -> Path:
    """`source` with `padding` spaces inside an XML comment of word/document.xml."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "word/document.xml":
                head, _, rest = data.partition(b"?>")
                data = head + b"?><!--" + b" " * padding + b"-->" + rest
            zout.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    return target


async def test_docx_bomb_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    good = make_docx(tmp_path)
    bomb = _bomb(good, tmp_path / "bomb.docx", 64 << 20)  # 64 MiB of spaces: ~64 KB packed
    assert bomb.stat().st_size < 1 << 20
    async with open_services(Settings(data_dir=tmp_path / "data")) as services:
        refused = await services.pipeline.ingest_file(bomb)
        assert (refused.status, refused.error_code) == ("failed", "DOC_014")
        assert "decompression bomb" in (refused.error or "")
        # A real document of the same kind still goes through the same check.
        ok = await services.pipeline.ingest_file(good)
        assert ok.status == "completed", ok.error
    # The total cap holds too, whatever the ratio.
    tiny = Settings(data_dir=tmp_path / "data2", ingest=IngestSettings(max_unpacked_mb=0.001))
    async with open_services(tiny) as services:
        capped = await services.pipeline.ingest_file(good)
        assert (capped.status, capped.error_code) == ("failed", "DOC_014")
        assert "unpacks to more than" in (capped.error or "")


async def test_a_huge_word_without_spaces_is_cut_into_bounded_chunks(tmp_path: Path) -> None:
    word = "".join(chr(0x61 + (i * 7919) % 26) for i in range(200_000))
    path = tmp_path / "word.txt"
    path.write_text(f"A normal opening sentence about cells.\n\n{word}\n\nThe end.\n")
    async with open_services(Settings(data_dir=tmp_path / "data")) as services:
        result = await services.pipeline.ingest_file(path)
        assert result.status == "completed", result.error
        repo = services.pipeline.repo
        content = await repo.get_content(result.document_id or "")
        chunks = await repo.chunks_for(result.document_id or "")
        bound = services.pipeline.chunk_size * MAX_TOKEN_CHARS
        assert len(chunks) > 1
        assert max(len(c.text) for c in chunks) <= bound
        for c in chunks:
            assert c.text == content[c.start_char : c.end_char]
        covered = "".join(content[c.start_char : c.end_char] for c in chunks)
        assert word[:1000] in covered and word[-1000:] in covered


async def test_a_retried_delete_finishes_what_a_failed_one_left(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    chroma_dir = tmp_path / "chroma"
    with running_chroma(chroma_dir) as (url, proc):
        settings = Settings(data_dir=tmp_path / "data", vectors=VectorSettings(url=url))
        async with open_services(settings) as services:
            done = await services.pipeline.ingest_file(folder / "history.md")
            doc_id = done.document_id or ""
            assert done.status == "completed"
            proc.kill()
            proc.wait(10)
            with pytest.raises(StudyRAGError):
                await services.pipeline.delete_document(doc_id)
            with pytest.raises(DocumentNotFound):
                await services.documents.get(doc_id)  # hidden, as a delete must be
            async with services.db.session() as s:
                from studyrag.db.models import Document

                row = await s.get(Document, doc_id)
            assert row is not None and row.status == DELETING
            # The store comes back (same data, same address): the retried delete finishes.
            port = url.rsplit(":", 1)[1]
            with running_chroma(chroma_dir, port=int(port)):
                await services.pipeline.delete_document(doc_id)
                assert await counts(services, doc_id) == (0, 0, 0)
                with pytest.raises(DocumentNotFound):
                    await services.pipeline.delete_document(doc_id)


async def test_failed_documents_are_bounded_per_notebook(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", ingest=IngestSettings(keep_failed=3))
    async with open_services(settings) as services:
        ids = []
        for i in range(6):
            (tmp_path / f"empty{i}.txt").write_text(" " * (i + 1))
            r = await services.pipeline.ingest_file(tmp_path / f"empty{i}.txt")
            assert r.status == "failed"
            ids.append(r.document_id)
        kept, total = await services.documents.list(status=FAILED)
        assert total == 3
        assert {d.id for d in kept} == set(ids[-3:])  # the newest are kept
        # Their originals went with them: only the kept ones have a file.
        files = [p for p in (tmp_path / "data" / "files").rglob("*") if p.is_file()]
        assert len(files) == 3


async def test_a_killed_upload_leaves_nothing_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    async with open_services(settings, with_jobs=True):
        pass
    # What a SIGKILL mid-upload leaves: a partial original and a partial archive.
    (data / "files" / ".incoming").mkdir(parents=True, exist_ok=True)
    (data / "files" / ".incoming" / "partial").write_bytes(b"x" * 1000)
    (data / "imports").mkdir(exist_ok=True)
    (data / "imports" / "partial.zip").write_bytes(b"PK\x03\x04" + b"x" * 1000)
    async with open_services(settings, with_jobs=True):
        assert list((data / "files" / ".incoming").iterdir()) == []
        assert list((data / "imports").iterdir()) == []
