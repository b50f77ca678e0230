"""Document and chunk persistence, including the full-text rows that mirror the chunks."""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from studyrag.db.models import Chunk, Document
from studyrag.db.session import Database, fetch_all
from studyrag.errors import AmbiguousId, DocumentNotFound, StudyRAGError
from studyrag.retrieval.types import SearchFilters

# As git: an id may be shortened to any unique prefix of at least this many characters.
MIN_ID_PREFIX = 4
# Candidates an ambiguous prefix lists.
_MAX_CANDIDATES = 10

# Statuses a document passes through; only "completed" documents are searchable.
QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED, DELETING = (
    "queued",
    "processing",
    "completed",
    "failed",
    "cancelled",
    "deleting",
)


@dataclass(frozen=True, slots=True)
class ChunkView:
    """What search shows of a chunk."""

    id: int
    page: int | None
    section: str
    start_char: int
    end_char: int
    text: str


@dataclass(frozen=True, slots=True)
class DocumentView:
    """What search shows of a chunk's (completed) document."""

    id: str
    filename: str
    file_type: str
    meta: dict[str, Any]
    notebook_id: str = ""


class DocumentRepo:
    """All SQL that touches documents and chunks."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, **fields: Any) -> Document:
        """Insert a document row and commit it."""
        async with self.db.session() as s:
            doc = Document(**fields)
            s.add(doc)
        return doc

    async def get(self, document_id: str) -> Document:
        """The document, or DocumentNotFound (DOC_004)."""
        async with self.db.session() as s:
            doc = await s.get(Document, document_id)
        if doc is None or doc.status == DELETING:
            raise DocumentNotFound(f"No document with id {document_id!r}.")
        return doc

    async def resolve_id_prefix(self, prefix: str) -> str:
        """The id of the one document whose id starts with `prefix` (a full id or ≥ 4 chars).

        Raises DocumentNotFound (DOC_004) when none matches, AmbiguousId (REQUEST_003) with the
        candidates when several do.
        """
        return await resolve_prefix(
            self.db,
            prefix,
            id_column=Document.id,
            label_column=Document.filename,
            visible=Document.status != DELETING,
            kind="document",
            not_found=DocumentNotFound,
        )

    async def get_content(self, document_id: str) -> str:
        """The extracted text that chunk offsets point into."""
        async with self.db.session() as s:
            value = await s.scalar(select(Document.content).where(Document.id == document_id))
        return value or ""

    async def list(
        self,
        *,
        notebook_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        notebook_ids: Collection[str] | None = None,
    ) -> tuple[builtins.list[Document], int]:
        """Documents newest first, with the total count (in `notebook_ids` when given)."""
        stmt = select(Document).where(Document.status != DELETING)
        count = select(func.count()).select_from(Document).where(Document.status != DELETING)
        if notebook_id is not None:
            stmt = stmt.where(Document.notebook_id == notebook_id)
            count = count.where(Document.notebook_id == notebook_id)
        if notebook_ids is not None:
            stmt = stmt.where(Document.notebook_id.in_(list(notebook_ids)))
            count = count.where(Document.notebook_id.in_(list(notebook_ids)))
        if status:
            stmt = stmt.where(Document.status == status)
            count = count.where(Document.status == status)
        stmt = stmt.order_by(Document.created_at.desc(), Document.id).limit(limit).offset(offset)
        async with self.db.session() as s:
            docs = builtins.list((await s.scalars(stmt)).all())
            total = int(await s.scalar(count) or 0)
        return docs, total

    async def all_ids(
        self, *, status: str | None = None, notebook_id: str | None = None
    ) -> builtins.list[str]:
        stmt = select(Document.id)
        if status:
            stmt = stmt.where(Document.status == status)
        if notebook_id is not None:
            stmt = stmt.where(Document.notebook_id == notebook_id)
        async with self.db.session() as s:
            return builtins.list((await s.scalars(stmt)).all())

    async def find_by_sha(self, sha256: str, *, notebook_id: str) -> Document | None:
        """A document of the notebook with these bytes, ingested or on its way, if any."""
        async with self.db.session() as s:
            return await s.scalar(
                select(Document)
                .where(
                    Document.notebook_id == notebook_id,
                    Document.sha256 == sha256,
                    Document.status.in_((COMPLETED, PROCESSING, QUEUED)),
                )
                .order_by(Document.status)  # "completed" first
                .limit(1)
            )

    async def drop_failed(
        self, *, notebook_id: str, filename: str, sha256: str
    ) -> builtins.list[str]:
        """Forget earlier failed or cancelled attempts of this file (so a retry leaves one
        record); returns their sha256s, whose originals may now be unused."""
        where = (
            Document.notebook_id == notebook_id,
            Document.status.in_((FAILED, CANCELLED)),
            (Document.filename == filename) | (Document.sha256 == sha256),
        )
        async with self.db.session() as s:
            shas = builtins.list((await s.scalars(select(Document.sha256).where(*where))).all())
            await s.execute(delete(Document).where(*where))
        return shas

    async def claim(self, document_id: str, *, owner: str) -> Document | None:
        """Take a queued document for processing; None when it is no longer queued."""
        now = datetime.now(UTC)
        async with self.db.session() as s:
            result = await s.execute(
                update(Document)
                .where(Document.id == document_id, Document.status == QUEUED)
                .values(
                    status=PROCESSING, step="extracting", progress=2.0, owner=owner, updated_at=now
                )
            )
            if not getattr(result, "rowcount", 0):
                return None
            return await s.get(Document, document_id)

    async def set_step(self, document_ids: builtins.list[str], step: str, progress: float) -> None:
        """Record the step of documents being processed (one statement for a batch)."""
        if not document_ids:
            return
        async with self.db.session() as s:
            await s.execute(
                update(Document)
                .where(Document.id.in_(document_ids), Document.status == PROCESSING)
                .values(step=step, progress=progress, updated_at=datetime.now(UTC))
            )

    async def assign_job(self, document_ids: builtins.list[str], job_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(
                update(Document).where(Document.id.in_(document_ids)).values(job_id=job_id)
            )

    async def same_name(
        self, notebook_id: str, filename: str, exclude_id: str, *, before: datetime | None
    ) -> builtins.list[Document]:
        """Older finished versions of a file name in a notebook (a newer upload replaces
        them; an older one that finishes later never replaces a newer one)."""
        where = [
            Document.notebook_id == notebook_id,
            Document.filename == filename,
            Document.id != exclude_id,
            Document.status.in_((COMPLETED, FAILED, CANCELLED)),
        ]
        if before is not None:
            where.append(Document.created_at < before)
        async with self.db.session() as s:
            return builtins.list((await s.scalars(select(Document).where(*where))).all())

    async def sha_in_use(self, sha256: str) -> bool:
        """Whether any document (in any notebook) still refers to these bytes."""
        async with self.db.session() as s:
            found = await s.scalar(select(Document.id).where(Document.sha256 == sha256).limit(1))
        return found is not None

    async def notebooks_holding_documents(self) -> builtins.list[str]:
        """Up to two notebook ids that hold any document (search needs "is it only one?")."""
        if self.db.is_sqlite:
            rows = await self.db.read(
                lambda conn: fetch_all(
                    conn, "SELECT DISTINCT notebook_id FROM documents LIMIT 2", []
                )
            )
            return [r[0] for r in rows]
        async with self.db.session() as s:
            return builtins.list(
                (await s.scalars(select(Document.notebook_id).distinct().limit(2))).all()
            )

    async def set_status(
        self, document_id: str, status: str, *, expect: str | None = None, **fields: Any
    ) -> bool:
        """Change a document's status; with `expect`, only from that status. True if changed."""
        stmt = update(Document).where(Document.id == document_id)
        if expect is not None:
            stmt = stmt.where(Document.status == expect)
        async with self.db.session() as s:
            result = await s.execute(
                stmt.values(status=status, updated_at=datetime.now(UTC), **fields)
            )
        return bool(getattr(result, "rowcount", 0))

    async def by_status(self, statuses: Sequence[str]) -> builtins.list[Document]:
        async with self.db.session() as s:
            return builtins.list(
                (await s.scalars(select(Document).where(Document.status.in_(statuses)))).all()
            )

    # --- chunks ------------------------------------------------------------------------
    async def insert_chunks(
        self, document_id: str, rows: builtins.list[dict[str, Any]]
    ) -> builtins.list[int]:
        """Insert chunk rows and their full-text rows in one transaction; returns chunk ids."""
        if not rows:
            return []
        async with self.db.session() as s:
            result = await s.execute(
                insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True),
                [{**r, "document_id": document_id} for r in rows],
            )
            ids = [int(i) for i in result.scalars().all()]
            if self.db.is_sqlite:
                await s.execute(
                    text("INSERT INTO chunks_fts(rowid, text, section) VALUES (:id, :text, :sec)"),
                    [
                        {
                            "id": i,
                            "text": r["text"],
                            "sec": f"{r.get('context', '')} {r.get('section', '')}".strip(),
                        }
                        for i, r in zip(ids, rows, strict=True)
                    ],
                )
        return ids

    async def update_chunk_contexts(self, contexts: dict[int, str]) -> None:
        """Set chunks' contexts and their full-text rows in one transaction (ids -> context)."""
        if not contexts:
            return
        async with self.db.session() as s:
            table = Chunk.__table__
            assert isinstance(table, Table)
            # Core, not ORM: an executemany UPDATE keyed by a bound id.
            stmt = update(table).where(table.c.id == bindparam("cid"))
            await s.execute(
                stmt.values(context=bindparam("ctx")),
                [{"cid": cid, "ctx": ctx} for cid, ctx in contexts.items()],
            )
            if self.db.is_sqlite:
                # The FTS5 table is standalone: a row is replaced by deleting and inserting it.
                # (PostgreSQL's tsvector column is generated from the context and follows it.)
                rows = (
                    await s.execute(
                        select(Chunk.id, Chunk.text, Chunk.section).where(
                            Chunk.id.in_(list(contexts))
                        )
                    )
                ).all()
                await s.execute(
                    text("DELETE FROM chunks_fts WHERE rowid = :id"), [{"id": r.id} for r in rows]
                )
                await s.execute(
                    text("INSERT INTO chunks_fts(rowid, text, section) VALUES (:id, :text, :sec)"),
                    [
                        {
                            "id": r.id,
                            "text": r.text,
                            "sec": f"{contexts[r.id]} {r.section}".strip(),
                        }
                        for r in rows
                    ],
                )

    async def delete_chunks(self, document_id: str, session: AsyncSession | None = None) -> None:
        """Remove a document's chunks and their full-text rows."""
        if session is None:
            async with self.db.session() as s:
                await self._delete_chunks(s, document_id)
        else:
            await self._delete_chunks(session, document_id)

    async def _delete_chunks(self, s: AsyncSession, document_id: str) -> None:
        if self.db.is_sqlite:
            await s.execute(
                text(
                    "DELETE FROM chunks_fts WHERE rowid IN "
                    "(SELECT id FROM chunks WHERE document_id = :d)"
                ),
                {"d": document_id},
            )
        await s.execute(delete(Chunk).where(Chunk.document_id == document_id))

    async def delete_document(self, document_id: str) -> None:
        """Remove the document row with its chunks and full-text rows."""
        async with self.db.session() as s:
            await self._delete_chunks(s, document_id)
            await s.execute(delete(Document).where(Document.id == document_id))

    async def chunk_ids(self, document_id: str) -> builtins.list[int]:
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Chunk.id)
                        .where(Chunk.document_id == document_id)
                        .order_by(Chunk.index)
                    )
                ).all()
            )

    async def chunks_for(self, document_id: str) -> builtins.list[Chunk]:
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.index)
                    )
                ).all()
            )

    async def searchable_chunks(
        self, ids: Iterable[int], *, notebook_id: str | None = None
    ) -> dict[int, tuple[ChunkView, DocumentView]]:
        """Chunks by id whose document is completed (others are not searchable yet), and in
        `notebook_id` when given (the last word on scope, whatever the indexes returned)."""
        id_list = builtins.list(ids)
        if not id_list:
            return {}
        # The status is checked here, not in SQL: with it in the WHERE clause SQLite starts
        # from ix_documents_status and walks every completed document's chunks (28 ms at
        # 100k chunks instead of 0.05 ms by primary key). Plain rows, not ORM objects: this
        # is on every search's critical path.
        if self.db.is_sqlite:
            rows = await self.db.read(lambda conn: _searchable_sqlite(conn, id_list))
        else:
            stmt = (
                select(
                    Chunk.id, Chunk.page, Chunk.section, Chunk.start_char, Chunk.end_char,
                    Chunk.text, Document.id, Document.filename, Document.file_type,
                    Document.meta, Document.status, Document.notebook_id,
                )
                .join(Document, Document.id == Chunk.document_id)
                .where(Chunk.id.in_(id_list))
            )  # fmt: skip
            async with self.db.engine.connect() as conn:
                rows = [tuple(r) for r in (await conn.execute(stmt)).all()]
        return {
            r[0]: (ChunkView(*r[:6]), DocumentView(r[6], r[7], r[8], _meta(r[9]), r[11]))
            for r in rows
            if r[10] == COMPLETED and (notebook_id is None or r[11] == notebook_id)
        }

    async def chunk_with_neighbours(
        self, chunk_id: int
    ) -> tuple[Chunk, Document, int | None, int | None]:
        """A chunk, its document, and the ids of the chunks before and after it."""
        async with self.db.session() as s:
            chunk = await s.get(Chunk, chunk_id)
            doc = await s.get(Document, chunk.document_id) if chunk is not None else None
            if chunk is None or doc is None or doc.status == DELETING:
                from studyrag.errors import ChunkNotFound

                raise ChunkNotFound(f"No chunk with id {chunk_id}.")
            prev_id = await s.scalar(
                select(Chunk.id).where(
                    Chunk.document_id == chunk.document_id, Chunk.index == chunk.index - 1
                )
            )
            next_id = await s.scalar(
                select(Chunk.id).where(
                    Chunk.document_id == chunk.document_id, Chunk.index == chunk.index + 1
                )
            )
        return chunk, doc, prev_id, next_id

    async def samples(
        self, filters: SearchFilters | None, *, titles: int, chunks: int
    ) -> tuple[builtins.list[tuple[str, dict[str, Any]]], builtins.list[str]]:
        """Recent (filename, metadata) and chunk texts of the completed documents in scope:
        what "nothing relevant was found" suggests asking about instead."""
        where = [Document.status == COMPLETED]
        if filters is not None and filters.notebook_id:
            where.append(Document.notebook_id == filters.notebook_id)
        if filters is not None and filters.document_ids:
            where.append(Document.id.in_(filters.document_ids))
        if filters is not None and filters.file_types:
            where.append(Document.file_type.in_(filters.file_types))
        async with self.db.session() as s:
            docs = (
                await s.execute(
                    select(Document.filename, Document.meta)
                    .where(*where)
                    .order_by(Document.updated_at.desc())
                    .limit(titles)
                )
            ).all()
            texts = (
                await s.scalars(
                    select(Chunk.text)
                    .join(Document, Document.id == Chunk.document_id)
                    .where(*where)
                    .order_by(Chunk.id.desc())
                    .limit(chunks)
                )
            ).all()
        return [(str(name), dict(meta or {})) for name, meta in docs], builtins.list(texts)

    async def stats(self) -> dict[str, Any]:
        async with self.db.session() as s:
            by_status = dict(
                (await s.execute(select(Document.status, func.count()).group_by(Document.status)))
                .tuples()
                .all()
            )
            chunks = int(await s.scalar(select(func.count()).select_from(Chunk)) or 0)
        return {"documents_by_status": by_status, "chunks": chunks}


async def resolve_prefix(
    db: Database,
    prefix: str,
    *,
    id_column: InstrumentedAttribute[str],
    label_column: InstrumentedAttribute[str],
    visible: ColumnElement[bool],
    kind: str,
    not_found: type[StudyRAGError],
) -> str:
    """The one id of `id_column` among `visible` rows that starts with `prefix`.

    Shared by documents and conversations: `not_found` when none matches or the prefix is
    shorter than MIN_ID_PREFIX, AmbiguousId listing (id, label) candidates when several do.
    """
    prefix = prefix.strip().lower()
    if len(prefix) < MIN_ID_PREFIX:
        raise not_found(
            f"No {kind} with id {prefix!r}.",
            hint=f"An id may be shortened to its first {MIN_ID_PREFIX} or more characters.",
        )
    stmt = (
        select(id_column, label_column)
        .where(id_column.startswith(prefix, autoescape=True), visible)
        .order_by(id_column)
        .limit(_MAX_CANDIDATES)
    )
    async with db.session() as s:
        rows = [(str(i), str(label)) for i, label in (await s.execute(stmt)).all()]
    if not rows:
        raise not_found(f"No {kind} id starts with {prefix!r}.")
    if len(rows) > 1:
        raise AmbiguousId(kind, prefix, rows)
    return rows[0][0]


def _searchable_sqlite(conn: Any, ids: builtins.list[int]) -> builtins.list[tuple[Any, ...]]:
    return fetch_all(
        conn,
        "SELECT c.id, c.page, c.section, c.start_char, c.end_char, c.text, d.id, "
        "d.filename, d.file_type, d.metadata, d.status, d.notebook_id FROM chunks c "
        f"JOIN documents d ON d.id = c.document_id WHERE c.id IN ({', '.join('?' * len(ids))})",
        ids,
    )


def _meta(value: Any) -> dict[str, Any]:
    """A JSON column as a dict, whether the driver decoded it (asyncpg) or not (sqlite3)."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})
