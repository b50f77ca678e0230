"""SQLite search reads: exact MaxScore lexical top k, and the Database.read path they use."""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from studyrag.db.repo import COMPLETED, DocumentRepo
from studyrag.db.session import Database, fetch_all
from studyrag.retrieval import lexical
from studyrag.retrieval.lexical import LexicalIndex, query_terms
from studyrag.retrieval.types import SearchFilters

# A few words in nearly every chunk, many in some, a long tail in few: like real text.
COMMON = ["cells", "patients", "study", "results", "increased"]
MIDDLE = [f"topic{i}" for i in range(40)]
RARE = [f"rare{i}" for i in range(400)]


def _chunk_text(rng: random.Random) -> str:
    words = rng.sample(COMMON, rng.randint(1, 4))
    words += rng.sample(MIDDLE, rng.randint(1, 3))
    words += rng.sample(RARE, rng.randint(0, 2))
    words += ["filler"] * rng.randint(0, 30)
    # Frequent words repeated sometimes, so term frequencies differ between rows.
    words += rng.choices(COMMON, k=rng.randint(0, 5))
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture
async def corpus(tmp_path: Path) -> AsyncIterator[tuple[Database, DocumentRepo, list[str]]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'lex.db'}")
    await db.migrate()
    repo = DocumentRepo(db)
    rng = random.Random(7)
    doc_ids = []
    for d in range(12):
        doc = await repo.create(
            filename=f"d{d}.md",
            file_type="md" if d % 2 else "txt",
            sha256=uuid.uuid4().hex,
            status=COMPLETED,
        )
        texts = [_chunk_text(rng) for _ in range(150)]
        await repo.insert_chunks(
            doc.id,
            [
                {
                    "index": i,
                    "text": t,
                    "start_char": 0,
                    "end_char": len(t),
                    "page": None,
                    "section": f"Part {i % 3}",
                    "token_count": len(t.split()),
                }
                for i, t in enumerate(texts)
            ],
        )
        doc_ids.append(doc.id)
    yield db, repo, doc_ids
    await db.aclose()


async def _plain(db: Database, query: str, k: int, filters: SearchFilters | None) -> list:
    """The reference: one OR query over every term, every matching row scored."""
    lex = LexicalIndex(db)
    match = lexical._any(query_terms(query))
    rows = await db.read(lambda conn: lex._query(conn, match, k, filters))
    return [(int(r[0]), round(-float(r[1]), 9)) for r in rows]


def _queries(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        words = rng.sample(COMMON, rng.randint(1, 3)) + rng.sample(MIDDLE, rng.randint(0, 2))
        words += rng.sample(RARE, rng.randint(0, 2))
        out.append(" ".join(words))
    return out


async def test_split_search_returns_exactly_the_plain_top_k(corpus, monkeypatch) -> None:
    db, _, doc_ids = corpus
    lex = LexicalIndex(db)
    splits = 0
    original = LexicalIndex._split_query

    def counting(self, *args, **kwargs):
        nonlocal splits
        splits += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LexicalIndex, "_split_query", counting)
    monkeypatch.setattr(lexical, "_SPLIT_MIN_ROWS", 0)  # the shortcut is for big indexes
    rng = random.Random(11)
    filters_cases = [
        None,
        SearchFilters(file_types=("md",)),
        SearchFilters(document_ids=tuple(doc_ids[:5])),
    ]
    for query in _queries(rng, 60):
        for k in (5, 20, 100):
            for filters in filters_cases:
                got = [
                    (c.chunk_id, round(c.score, 9))
                    for c in await lex.search(query, top_k=k, filters=filters)
                ]
                want = await _plain(db, query, k, filters)
                # Equal scores may come in either order; the scores and the set must agree.
                assert [s for _, s in got] == [s for _, s in want], query
                cut = want[-1][1] if len(want) == k else None
                assert {c for c, s in got if s != cut} == {c for c, s in want if s != cut}
    # The shortcut is taken for most of these queries, or this test proves nothing.
    assert splits > 100


async def test_term_statistics_follow_the_index(corpus, monkeypatch) -> None:
    db, repo, _ = corpus
    monkeypatch.setattr(lexical, "_SPLIT_MIN_ROWS", 0)
    lex = LexicalIndex(db)
    await lex.search("cells rare1", top_k=5)
    async with db.session() as s:
        exact = await s.scalar(
            text("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"rare1\"'")
        )
        rows = await s.scalar(text("SELECT count(*) FROM chunks"))
    assert lex._df["rare1"] == exact
    # The row count read from FTS5's averages record is the table's.
    assert lex._rows == rows == 12 * 150
    # New rows change the FTS5 structure record, so the cached counts are dropped.
    doc = await repo.create(filename="new.md", file_type="md", sha256="x", status=COMPLETED)
    await repo.insert_chunks(
        doc.id,
        [
            {
                "index": i,
                "text": "rare1 cells",
                "start_char": 0,
                "end_char": 11,
                "page": None,
                "section": "",
                "token_count": 2,
            }
            for i in range(3)
        ],
    )
    await lex.search("cells rare1", top_k=5)
    assert lex._df["rare1"] == exact + 3 and lex._rows == rows + 3
    await repo.delete_document(doc.id)
    await lex.search("cells rare1", top_k=5)
    assert lex._df["rare1"] == exact


async def test_small_indexes_skip_the_planning(corpus, monkeypatch) -> None:
    db, _, _ = corpus
    lex = LexicalIndex(db)

    def fail(*args, **kwargs):
        raise AssertionError("split on a small index")

    monkeypatch.setattr(LexicalIndex, "_split_query", fail)
    assert len(await lex.search("cells topic1 rare3", top_k=10)) == 10


def test_varint_decoding() -> None:
    assert lexical._varint(bytes([0x05, 0xFF])) == 5
    assert lexical._varint(bytes([0x81, 0x00])) == 128
    assert lexical._varint(bytes([0x86, 0x8D, 0x20])) == 100_000
    assert lexical._varint(b"") is None and lexical._varint(None) is None


async def test_database_read_path_sees_commits_and_survives_errors(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await db.migrate()
    repo = DocumentRepo(db)

    def count(conn) -> int:
        return int(fetch_all(conn, "SELECT count(*) FROM documents")[0][0])

    assert await db.read(count) == 0
    await repo.create(filename="a.md", file_type="md", sha256="a", status=COMPLETED)
    assert await db.read(count) == 1  # a pooled reader sees what the async engine committed

    def broken(conn) -> int:
        fetch_all(conn, "SELECT nope FROM documents")
        return 0

    with pytest.raises(Exception, match="nope"):
        await db.read(broken)
    with pytest.raises(Exception, match="readonly"):
        await db.read(lambda conn: fetch_all(conn, "DELETE FROM documents"))
    assert await db.read(count) == 1
    await db.aclose()


async def test_database_read_without_a_file_uses_the_async_engine() -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.migrate()
    rows = await db.read(lambda conn: fetch_all(conn, "SELECT count(*) FROM chunks"))
    assert rows == [(0,)]
    await db.aclose()


async def test_one_snapshot_while_another_connection_writes(tmp_path: Path, monkeypatch) -> None:
    """Bounds and scores must come from the same state of the index, or the top k is wrong."""
    monkeypatch.setattr(lexical, "_SPLIT_MIN_ROWS", 0)
    path = tmp_path / "race.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    writer = sqlite3.connect(path, check_same_thread=False)
    texts = ["rare " + "filler " * 60] * 20 + ["common common common"] * 900 + ["other"] * 80
    writer.executemany(
        "INSERT INTO chunks_fts(rowid, text, section) VALUES (?, ?, '')",
        [(i + 1, t) for i, t in enumerate(texts)],
    )
    writer.commit()
    lex = LexicalIndex(db)
    before = await _plain(db, "rare common", 5, None)
    plan = lex._plan

    def plan_then_write(conn, terms):
        made = plan(conn, terms)
        # Another process commits a large delete between the planning reads and the query.
        writer.execute("DELETE FROM chunks_fts WHERE rowid BETWEEN 21 AND 870 OR rowid <= 3")
        writer.commit()
        return made

    monkeypatch.setattr(lex, "_plan", plan_then_write)
    got = [(c.chunk_id, round(c.score, 9)) for c in await lex.search("rare common", top_k=5)]
    assert got == before  # the state the search started from, consistently
    writer.close()
    await db.aclose()
