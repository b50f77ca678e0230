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


_MIGRATE = """
import asyncio, sys
from studyrag.db.session import Database

async def main():
    db = Database(sys.argv[1])
    try:
        await db.migrate()
    finally:
        await db.aclose()

asyncio.run(main())
"""


async def test_workers_starting_together_migrate_one_database_once(pg_url: str) -> None:
    """Three processes migrate one empty database at the same moment (workers of deploy/
    started together): every one succeeds and the schema is at head once."""
    import asyncio
    import sys

    import asyncpg
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from studyrag.db.session import MIGRATIONS_DIR

    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _MIGRATE, pg_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    errors = [(await p.communicate())[1].decode()[-600:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        versions = [r["version_num"] for r in await conn.fetch("SELECT * FROM alembic_version")]
    finally:
        await conn.close()
    assert versions == [head]
