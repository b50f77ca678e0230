"""Notebook archives in one process (real MiniLM, real Chroma, real SQLite) and through the
real `studyrag` console script: a restore that fails halfway leaves nothing behind."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from studyrag.config import Settings
from studyrag.errors import BackendUnavailable
from studyrag.retrieval.types import SearchFilters
from studyrag.services import open_services
from tests.e2e.test_cli import lines, run
from tests.ingest.fixtures import make_pdf

pytestmark = pytest.mark.slow

NOTES = "# Cells\n\n## Mitochondria\n\nMitochondria make ATP, the energy currency of the cell.\n"
ROCKS = "# Rocks\n\nBasalt is a fine-grained volcanic rock formed from cooling lava.\n"


def logical_snapshot(data_dir: Path) -> dict[str, Any]:
    """What a user could tell apart: rows (full-text rows included), vectors, files."""
    tables = {}
    with sqlite3.connect(f"file:{data_dir / 'studyrag.db'}?mode=ro", uri=True) as conn:
        for name in ("notebooks", "documents", "chunks", "conversations", "messages", "app_state"):
            tables[name] = sorted(map(repr, conn.execute(f"SELECT * FROM {name}").fetchall()))
        tables["chunks_fts"] = sorted(
            map(repr, conn.execute("SELECT rowid, text, section FROM chunks_fts").fetchall())
        )
    chroma = data_dir / "chroma" / "chroma.sqlite3"
    with sqlite3.connect(f"file:{chroma}?mode=ro", uri=True) as conn:
        vectors = sorted(conn.execute("SELECT embedding_id FROM embeddings").fetchall())
    files = {
        str(p.relative_to(data_dir / "files")): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((data_dir / "files").rglob("*"))
        if p.is_file()
    }
    return {"tables": tables, "vectors": vectors, "files": files}


async def make_archive(tmp_path: Path, minilm: Any) -> Path:
    """A notebook of a PDF and two notes, exported with its vectors."""
    source = tmp_path / "source"
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs)
    (docs / "cells.md").write_text(NOTES)
    (docs / "rocks.md").write_text(ROCKS)
    async with open_services(Settings(data_dir=source), embedder=minilm) as services:
        nb = await services.notebooks.create("Science")
        results = await services.pipeline.ingest_paths([docs], notebook_id=nb.id)
        assert [r.status for r in results] == ["completed"] * 3
        target = tmp_path / "science.zip"
        await services.archives.export_to(nb.id, target, vectors=True)
    return target


async def test_a_restore_failing_halfway_is_rolled_back(tmp_path: Path, minilm: Any) -> None:
    archive = await make_archive(tmp_path, minilm)
    data = tmp_path / "target"
    async with open_services(Settings(data_dir=data), embedder=minilm) as services:
        # cells.md is already in this library: its original must survive the rollback.
        (tmp_path / "cells.md").write_text(NOTES)
        kept = await services.pipeline.ingest_file(tmp_path / "cells.md")
        assert kept.status == "completed"
        before = logical_snapshot(data)
        real_upsert = services.vectors.upsert
        calls = 0

        async def failing_upsert(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:  # the last document: two are fully written by now
                raise BackendUnavailable("The vector store went away.")
            await real_upsert(*args, **kwargs)

        services.vectors.upsert = failing_upsert  # type: ignore[method-assign]
        job = await services.archives.import_file(archive)
        assert job.status == "failed" and "went away" in (job.error or "")
        assert calls == 3
        after = logical_snapshot(data)
        assert after == before
        assert archive.is_file()  # a file given by path is the user's: never removed

        # With the store back, the same archive imports, and its vectors came along.
        services.vectors.upsert = real_upsert  # type: ignore[method-assign]
        job = await services.archives.import_file(archive)
        assert job.status == "completed", job.error
        assert job.meta["vectors"] == "archive" and job.meta["documents"] == 3
        nb = await services.notebooks.resolve("Science")

        hits = await services.search.search(
            "volcanic rock from lava", top_k=3, filters=SearchFilters(notebook_id=nb.id)
        )
        assert hits.results[0].filename == "rocks.md"


async def test_an_interrupted_import_is_undone_and_redone_at_the_next_start(
    tmp_path: Path, minilm: Any
) -> None:
    """A stop during the job leaves rows behind; the next start removes them and imports
    the archive again from the start."""
    archive = await make_archive(tmp_path, minilm)
    data = tmp_path / "target"
    settings = Settings(data_dir=data)
    async with open_services(settings, embedder=minilm) as services:
        before = logical_snapshot(data)
        accepted = await services.archives._queue(archive, owned=False, submit=False)
        job = await services.jobs.jobs.get(accepted.job_id)
        real = services.archives._restore_document
        seen = 0

        async def stop_after_one(*args: Any, **kwargs: Any) -> str:
            nonlocal seen
            seen += 1
            if seen == 2:
                raise KeyboardInterrupt  # the process is stopped mid-import
            return await real(*args, **kwargs)

        services.archives._restore_document = stop_after_one  # type: ignore[method-assign]
        await services.jobs.jobs.set_status(job.id, "running")
        with pytest.raises(KeyboardInterrupt):
            await services.archives._run_import(await services.jobs.jobs.get(job.id))
    # KeyboardInterrupt is no Exception: nothing was undone (as after a kill).
    assert logical_snapshot(data) != before
    async with open_services(settings, embedder=minilm, with_jobs=True) as services:
        await services.jobs.runner.wait_idle()
        done = await services.jobs.jobs.get(accepted.job_id)
        assert done.status == "completed", done.error
        books = [b.name for b in await services.notebooks.list_public()]
        assert books.count("Science") == 1 and "Science (2)" not in books
        nb = await services.notebooks.resolve("Science")
        counts = (await services.notebooks.repo.counts([nb.id]))[nb.id]
        assert (counts.documents, counts.documents_completed) == (3, 3)
        assert await services.vectors.count() == counts.chunks


def test_cli_export_and_import(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cells.md").write_text(NOTES)
    (docs / "rocks.md").write_text(ROCKS)
    run("notebooks", "create", "Geo & Bio", data_dir=source, check=True)
    run("ingest", str(docs), "-n", "Geo & Bio", data_dir=source, check=True)
    archive = tmp_path / "out.zip"
    exported = lines(
        run("notebooks", "export", "geo & bio", "-o", str(archive), "--json", data_dir=source,
            check=True).stdout
    )  # fmt: skip
    assert exported[0]["name"] == "Geo & Bio" and exported[0]["size"] == archive.stat().st_size
    proc = run("notebooks", "import", str(archive), data_dir=target, check=True)
    assert "imported Geo & Bio" in proc.stdout and "2 documents" in proc.stdout
    assert "importing: 2/2" in proc.stderr  # progress, as the job reports it
    again = lines(run("notebooks", "import", str(archive), "--json", data_dir=target,
                      check=True).stdout)  # fmt: skip
    assert again[0]["name"] == "Geo & Bio (2)" and again[0]["vectors"] == "recomputed"

    def found(data_dir: Path, notebook: str) -> list[tuple[str, int, int]]:
        proc = run("search", "volcanic lava mitochondria", "--json", "-k", "10", "-n", notebook,
                   data_dir=data_dir, check=True)  # fmt: skip
        return [(r["filename"], r["start"], r["end"]) for r in lines(proc.stdout)]

    assert found(target, "Geo & Bio") == found(source, "Geo & Bio")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(archive.read_bytes()[:-100])
    refused = run("notebooks", "import", str(bad), data_dir=target)
    assert refused.returncode == 1 and "NB_006" in refused.stderr
    books = lines(run("notebooks", "list", "--json", data_dir=target, check=True).stdout)
    assert sorted(b["name"] for b in books) == ["Geo & Bio", "Geo & Bio (2)", "My notebook"]
    # Without -o: a file named after the notebook, in safe characters.
    run("notebooks", "export", "Geo & Bio (2)", data_dir=target, check=True, cwd=tmp_path)
    assert (tmp_path / "Geo _ Bio _2.studyrag.zip").is_file()
