"""The whole pipeline and the conversation store on PostgreSQL (when it is reachable)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from studyrag.config import DatabaseSettings, Settings
from studyrag.services import open_services
from tests.contracts.test_sql_store import PG_ADMIN, _pg_available
from tests.e2e.test_ingest_search import write_corpus

pytestmark = pytest.mark.slow


@asynccontextmanager
async def temporary_pg_database(prefix: str) -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards; skips without one."""
    if not await _pg_available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432: start it (database `test`)")
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with temporary_pg_database("studyrag_e2e") as url:
        yield url


async def test_ingest_search_delete_and_conversations_on_postgres(
    pg_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=pg_url))
    async with open_services(settings) as services:
        assert services.db.dialect == "postgresql"
        results = await services.pipeline.ingest_paths([write_corpus(tmp_path / "notes")])
        assert {r.status for r in results} == {"completed"}
        for mode in ("lexical", "semantic", "hybrid"):
            top = (await services.search.search("What does chlorophyll absorb?", mode=mode)).results
            assert (top[0].filename, top[0].page) == ("biology.pdf", 2), mode
        again = await services.pipeline.ingest_file(tmp_path / "notes" / "history.md")
        assert again.status == "duplicate"
        pdf = next(r for r in results if r.filename == "biology.pdf")
        await services.pipeline.delete_document(pdf.document_id or "")
        hits = await services.search.search("chlorophyll", mode="lexical")
        assert all(r.filename != "biology.pdf" for r in hits.results)

        conv = await services.conversations.create(title=None)
        for i in range(3):
            await services.conversations.add_message(conv.id, "user", f"question {i}")
        page = await services.conversations.list_messages(conv.id, limit=2)
        assert [m.seq for m in page.items] == [1, 2] and page.has_more_after
        assert (await services.conversations.get(conv.id)).message_count == 3
