"""SQL store + lexical index contract over SQLite (FTS5) and PostgreSQL (tsvector)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from studyrag.db.repo import COMPLETED, PROCESSING, DocumentRepo
from studyrag.db.session import Database
from studyrag.retrieval.lexical import LexicalIndex
from studyrag.retrieval.types import SearchFilters

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def _pg_available() -> bool:
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
        await conn.close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
        await database.migrate()
        yield database
        await database.aclose()
        return
    if not await _pg_available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432: start it (database `test`)")
    import asyncpg

    name = f"studyrag_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
    try:
        await database.migrate()
        yield database
    finally:
        await database.aclose()
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _doc(repo: DocumentRepo, name: str, ftype: str, texts: list[tuple[str, str]]) -> str:
    doc = await repo.create(
        filename=name, file_type=ftype, sha256=uuid.uuid4().hex, status=PROCESSING
    )
    await repo.insert_chunks(
        doc.id,
        [
            {
                "index": i,
                "text": t,
                "start_char": 0,
                "end_char": len(t),
                "page": i + 1,
                "section": sec,
                "token_count": len(t.split()),
            }
            for i, (t, sec) in enumerate(texts)
        ],
    )
    return doc.id


async def test_lexical_ranks_and_hides_unfinished_documents(db: Database) -> None:
    repo, lex = DocumentRepo(db), LexicalIndex(db)
    a = await _doc(
        repo,
        "a.md",
        "md",
        [
            ("Chlorophyll absorbs red and blue light.", "Photosynthesis"),
            ("Roots take up water from the soil.", "Roots"),
        ],
    )
    b = await _doc(repo, "b.pdf", "pdf", [("Light travels fast; chlorophyll is green.", "")])
    # Nothing is completed yet: whatever the index returns, none of it is searchable.
    early = await lex.search("chlorophyll light", top_k=5)
    assert await repo.searchable_chunks(c.chunk_id for c in early) == {}
    filtered = await lex.search("chlorophyll", top_k=5, filters=SearchFilters(file_types=["md"]))
    assert filtered == []  # the filtered path joins documents and sees their status
    await repo.set_status(a, COMPLETED)
    await repo.set_status(b, COMPLETED)
    hits = await lex.search("what does chlorophyll absorb?", top_k=5)
    rows = await repo.searchable_chunks(h.chunk_id for h in hits)
    assert rows[hits[0].chunk_id][0].text.startswith("Chlorophyll absorbs")
    assert all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Stemming: "absorbing" finds "absorbs"; section text is searchable too.
    assert await lex.search("absorbing", top_k=5)
    assert await lex.search("roots", top_k=5)
    only_pdf = await lex.search("chlorophyll", top_k=5, filters=SearchFilters(file_types=["pdf"]))
    assert {(await repo.searchable_chunks([h.chunk_id]))[h.chunk_id][1].id for h in only_pdf} == {b}
    only_a = await lex.search("chlorophyll", top_k=5, filters=SearchFilters(document_ids=[a]))
    assert len(only_a) == 1


async def test_delete_removes_lexical_rows(db: Database) -> None:
    repo, lex = DocumentRepo(db), LexicalIndex(db)
    a = await _doc(repo, "a.md", "md", [("Mitochondria make ATP.", "")])
    await repo.set_status(a, COMPLETED)
    assert len(await lex.search("mitochondria", top_k=5)) == 1
    await repo.delete_document(a)
    assert await lex.search("mitochondria", top_k=5) == []
    assert (await repo.stats())["chunks"] == 0


async def test_stopword_only_query_still_searches(db: Database) -> None:
    repo, lex = DocumentRepo(db), LexicalIndex(db)
    a = await _doc(repo, "a.md", "md", [("To be or not to be, that is the question.", "")])
    await repo.set_status(a, COMPLETED)
    hits = await lex.search("to be", top_k=5)
    # PostgreSQL's english configuration indexes no stopwords at all; FTS5 keeps them.
    assert len(hits) == (1 if db.is_sqlite else 0)
    assert await lex.search("!!! ???", top_k=5) == []


async def test_migrations_are_idempotent(db: Database) -> None:
    await db.migrate()
    await db.migrate()
