"""Upgrading a library made before notebooks (revision 0002) keeps every document,
chunk, conversation and vector, moved into the default notebook, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from studyrag.backends.registry import build_embedder, build_vector_store
from studyrag.config import DatabaseSettings, Settings
from studyrag.db.session import MIGRATIONS_DIR, Database
from studyrag.retrieval.types import SearchFilters
from studyrag.services import open_services
from tests.e2e.test_postgres import temporary_pg_database

pytestmark = pytest.mark.slow

TEXT = "Photosynthesis happens in the chloroplasts; chlorophyll absorbs red and blue light."


def _upgrade_to(revision: str):  # type: ignore[no-untyped-def]
    def run(conn) -> None:  # type: ignore[no-untyped-def]
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    return run


async def _library_at_0002(settings: Settings) -> None:
    """Rows as revision 0002 stored them, and a vector with the metadata it had then."""
    db = Database(settings.database_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0002"))
        ts = "'2026-01-01 00:00:00+00'"
        await conn.exec_driver_sql(
            "INSERT INTO documents (id, filename, source_path, file_type, size, sha256, status, "
            "chunk_count, metadata, content, created_at, updated_at) VALUES ('d1', 'bio.md', "
            f"'/x/bio.md', 'markdown', 80, 'abc', 'completed', 1, '{{}}', '{TEXT}', {ts}, {ts})"
        )
        await conn.exec_driver_sql(
            'INSERT INTO chunks (id, document_id, "index", text, start_char, end_char, section, '
            f"context, token_count) VALUES (1, 'd1', 0, '{TEXT}', 0, {len(TEXT)}, '', '', 20)"
        )
        if db.dialect == "postgresql":  # an explicit id does not advance the sequence
            await conn.exec_driver_sql("SELECT setval('chunks_id_seq', 1)")
        if db.dialect == "sqlite":
            await conn.exec_driver_sql(
                f"INSERT INTO chunks_fts(rowid, text, section) VALUES (1, '{TEXT}', '')"
            )
        await conn.exec_driver_sql(
            "INSERT INTO conversations (id, title, status, metadata, message_count, last_seq, "
            f"created_at, updated_at) VALUES ('c1', 'old chat', 'active', '{{}}', 1, 1, {ts}, {ts})"
        )
        await conn.exec_driver_sql(
            "INSERT INTO messages (id, conversation_id, seq, role, content, sources, metadata, "
            "status, created_at) VALUES ('m1', 'c1', 1, 'user', 'q', '[]', '{}', 'complete', "
            f"{ts})"
        )
    await db.aclose()
    embedder = build_embedder(settings)
    await embedder.start()
    vectors = build_vector_store(settings, model_name=embedder.model_name)
    async with vectors:
        (vector,) = await embedder.embed_documents([TEXT])
        await vectors.upsert(
            ["1"], [vector], [{"document_id": "d1", "file_type": "markdown", "chunk_index": 0}]
        )
    await embedder.aclose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[DatabaseSettings]:
    if request.param == "sqlite":
        yield DatabaseSettings()
        return
    async with temporary_pg_database("studyrag_mig") as url:
        yield DatabaseSettings(url=url)


async def test_upgrade_from_0002_moves_everything_into_the_default_notebook(
    database: DatabaseSettings, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database=database)
    settings.data_dir.mkdir(parents=True)
    await _library_at_0002(settings)

    async with open_services(settings) as services:
        default = await services.notebooks.default()
        doc = await services.documents.get("d1")
        assert (doc.notebook_id, doc.status, doc.step, doc.progress) == (
            default.id,
            "completed",
            "completed",
            100.0,
        )
        conv = await services.conversations.get("c1")
        assert conv.id == "c1"
        listed = await services.notebooks.list_public()
        assert (listed[0].id, listed[0].documents, listed[0].conversations) == (default.id, 1, 1)
        # The old vector now carries its notebook, so a filtered search still finds it.
        assert await services.vectors.get_ids(where={"notebook_id": default.id}) == ["1"]
        other = await services.notebooks.create("Another course")
        folder = tmp_path / "other"
        folder.mkdir()
        (folder / "rocks.md").write_text("# Rocks\n\nBasalt is a volcanic rock.\n")
        (result,) = await services.pipeline.ingest_paths([folder], notebook_id=other.id)
        assert result.status == "completed"
        for mode in ("semantic", "lexical", "hybrid"):
            found = await services.search.search(
                "chlorophyll absorbs light",
                mode=mode,
                filters=SearchFilters(notebook_id=default.id),
            )
            assert [r.document_id for r in found.results] == ["d1"], mode
    # Upgrading is done once: a second start changes nothing.
    async with open_services(settings) as services:
        assert await services.notebooks.repo.state("vectors_untagged") is None
        assert (await services.documents.get("d1")).notebook_id == default.id


def _insert_notebook(nid: str, name: str, owner: str | None) -> str:
    owner_sql = "NULL" if owner is None else f"'{owner}'"
    return (
        "INSERT INTO notebooks (id, name, name_key, description, is_default, status, metadata, "
        f"created_at, updated_at, owner_id) VALUES ('{nid}', '{name}', '{name.casefold()}', '', "
        f"false, 'active', '{{}}', '2026-01-0{len(nid)} 00:00:00+00', "
        f"'2026-01-01 00:00:00+00', {owner_sql})"
    )


async def test_0006_makes_notebook_names_unique_per_owner_keeping_every_row(
    database: DatabaseSettings, tmp_path: Path
) -> None:
    from sqlalchemy.exc import IntegrityError

    from studyrag.db.auth import AuthRepo

    settings = Settings(data_dir=tmp_path / "data", database=database)
    settings.data_dir.mkdir(parents=True)
    db = Database(settings.database_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0005"))
        await conn.exec_driver_sql(_insert_notebook("n1", "Biology 101", None))
        await conn.exec_driver_sql(_insert_notebook("n22", "Physics", "u1"))
    # Before 0006 the name is taken for the whole server.
    with pytest.raises(IntegrityError):
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(_insert_notebook("n333", "biology 101", "u2"))
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0006"))
        rows = (
            await conn.exec_driver_sql(
                "SELECT id, name, owner_id FROM notebooks WHERE id LIKE 'n%'"
            )
        ).all()
        assert sorted(tuple(r) for r in rows) == [
            ("n1", "Biology 101", None),
            ("n22", "Physics", "u1"),
        ]
        # Another owner may use the name now...
        await conn.exec_driver_sql(_insert_notebook("n333", "biology 101", "u2"))
        await conn.exec_driver_sql(_insert_notebook("n4444", "Physics", None))
    # ...but one owner still cannot have it twice, the local owner (NULL) included.
    for nid, name, owner in (("n55555", "BIOLOGY 101", None), ("n666666", "physics", "u1")):
        with pytest.raises(IntegrityError):
            async with db.engine.begin() as conn:
                await conn.exec_driver_sql(_insert_notebook(nid, name.casefold(), owner))

    # The first admin taking over the local notebooks: a clashing name gets a number.
    await AuthRepo(db).claim_unowned("u1")
    async with db.engine.begin() as conn:
        rows = (
            await conn.exec_driver_sql(
                "SELECT id, name, owner_id FROM notebooks WHERE id LIKE 'n%'"
            )
        ).all()
    assert sorted(tuple(r) for r in rows) == [
        ("n1", "Biology 101", "u1"),
        ("n22", "Physics", "u1"),
        ("n333", "biology 101", "u2"),
        ("n4444", "Physics (2)", "u1"),
    ]
    await db.aclose()
