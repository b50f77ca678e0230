"""Notebook persistence: rows, name lookup, counts and sizes."""

from __future__ import annotations

import builtins
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from studyrag.auth.context import acting_owner
from studyrag.db.models import AppState, Conversation, Document, Message, Notebook, User
from studyrag.db.session import Database
from studyrag.errors import AmbiguousNotebook, NotebookExists, NotebookNotFound

ACTIVE, NB_DELETING = "active", "deleting"
# Being restored from an archive: hidden from lists until the import completes.
NB_IMPORTING = "importing"
DEFAULT_NAME = "My notebook"


@dataclass(frozen=True, slots=True)
class NotebookCounts:
    """What a notebook holds."""

    documents: int = 0
    documents_completed: int = 0
    conversations: int = 0
    size_bytes: int = 0
    chunks: int = 0


def name_key(name: str) -> str:
    """Names are unique per owner whatever their case and inner spacing."""
    return " ".join(name.split()).casefold()


class NotebookRepo:
    """All SQL that touches notebooks (and the small app_state table)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def ensure_default(self) -> Notebook:
        """The default notebook, created on a fresh database."""
        async with self.db.session() as s:
            row = await s.scalar(select(Notebook).where(Notebook.is_default.is_(True)))
            if row is not None:
                return row
        try:
            return await self.create(DEFAULT_NAME, is_default=True)
        except NotebookExists:
            # Another process created it first.
            async with self.db.session() as s:
                row = await s.scalar(select(Notebook).where(Notebook.is_default.is_(True)))
            assert row is not None
            return row

    async def create(
        self,
        name: str,
        *,
        description: str = "",
        is_default: bool = False,
        status: str = ACTIVE,
        notebook_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Notebook:
        """Insert a notebook; NotebookExists when the name is taken."""
        row = Notebook(
            name=name,
            name_key=name_key(name),
            description=description,
            is_default=is_default,
            status=status,
            meta=dict(meta or {}),
            owner_id=acting_owner(),
        )
        if notebook_id is not None:
            row.id = notebook_id
        try:
            async with self.db.session() as s:
                s.add(row)
        except IntegrityError as exc:
            raise NotebookExists(f"A notebook named {name!r} exists already.") from exc
        return row

    async def get(self, notebook_id: str, *, deleting_ok: bool = False) -> Notebook:
        """The notebook, or NotebookNotFound (a notebook being deleted is gone)."""
        async with self.db.session() as s:
            row = await s.get(Notebook, notebook_id)
        if row is None or (row.status == NB_DELETING and not deleting_ok):
            raise NotebookNotFound(f"No notebook with id {notebook_id!r}.")
        return row

    async def find(
        self,
        name_or_id: str,
        *,
        viewer: str | None = None,
        visible: Collection[str] | None = None,
    ) -> Notebook:
        """A notebook by exact id, by name (any case), or by a unique id prefix, among the
        `visible` ids (None: every notebook, for the local owner).

        Names are unique per owner only: `viewer`'s own notebook of that name comes first
        (None is the local owner), then the single other one it sees; several others are
        AmbiguousNotebook (NB_011), naming them."""
        value = name_or_id.strip()

        def seen(row: Notebook | None) -> bool:
            return (
                row is not None
                and row.status != NB_DELETING
                and (visible is None or row.id in visible)
            )

        async with self.db.session() as s:
            row = await s.get(Notebook, value)
            if not seen(row):
                named = [
                    r
                    for r in (
                        await s.scalars(
                            select(Notebook)
                            .where(Notebook.name_key == name_key(value))
                            .order_by(Notebook.created_at)
                        )
                    ).all()
                    if seen(r)
                ]
                own = [r for r in named if r.owner_id == viewer]
                row = own[0] if own else named[0] if len(named) == 1 else None
                if len(named) > 1 and not own:
                    owners = await self._owner_names(s, [r.owner_id for r in named])
                    raise AmbiguousNotebook(
                        value, [(r.id, r.name, owners.get(r.owner_id)) for r in named]
                    )
            if row is None and len(value) >= 4 and value.isalnum():
                rows = [
                    r
                    for r in (
                        await s.scalars(
                            select(Notebook).where(Notebook.id.like(f"{value.lower()}%"))
                        )
                    ).all()
                    if seen(r)
                ]
                row = rows[0] if len(rows) == 1 else None
        if row is None or not seen(row):
            raise NotebookNotFound(f"No notebook named or with id {value!r}.")
        return row

    @staticmethod
    async def _owner_names(s: Any, owner_ids: builtins.list[str | None]) -> dict[str | None, str]:
        ids = [i for i in owner_ids if i is not None]
        rows = (await s.execute(select(User.id, User.name).where(User.id.in_(ids)))).all()
        return {None: "local owner"} | {r[0]: r[1] for r in rows}

    async def list(self) -> builtins.list[Notebook]:
        """Active notebooks, the default first, then by name."""
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Notebook)
                        .where(Notebook.status == ACTIVE)
                        .order_by(Notebook.is_default.desc(), Notebook.name_key)
                    )
                ).all()
            )

    async def update(self, notebook_id: str, **fields: Any) -> Notebook:
        """Change name and/or description; NotebookExists when the new name is taken."""
        values = dict(fields)
        if "name" in values:
            values["name_key"] = name_key(values["name"])
        values["updated_at"] = datetime.now(UTC)
        try:
            async with self.db.session() as s:
                await s.execute(
                    update(Notebook)
                    .where(Notebook.id == notebook_id, Notebook.status == ACTIVE)
                    .values(**values)
                )
        except IntegrityError as exc:
            raise NotebookExists(
                f"A notebook named {fields.get('name')!r} exists already."
            ) from exc
        return await self.get(notebook_id)

    async def touch(self, notebook_id: str) -> None:
        """Mark the notebook as used now (the home page sorts by it)."""
        async with self.db.session() as s:
            await s.execute(
                update(Notebook)
                .where(Notebook.id == notebook_id)
                .values(updated_at=datetime.now(UTC))
            )

    async def mark_deleting(self, notebook_id: str) -> bool:
        """Hide the notebook while a job removes its contents; False if it was not active."""
        async with self.db.session() as s:
            result = await s.execute(
                update(Notebook)
                .where(Notebook.id == notebook_id, Notebook.status == ACTIVE)
                .values(status=NB_DELETING, updated_at=datetime.now(UTC))
            )
        return bool(getattr(result, "rowcount", 0))

    async def reactivate(self, notebook_id: str) -> None:
        """A notebook whose deletion failed becomes visible again."""
        async with self.db.session() as s:
            await s.execute(
                update(Notebook)
                .where(Notebook.id == notebook_id, Notebook.status == NB_DELETING)
                .values(status=ACTIVE, updated_at=datetime.now(UTC))
            )

    async def activate(self, notebook_id: str) -> bool:
        """An imported notebook becomes visible; False when it was not being imported."""
        async with self.db.session() as s:
            result = await s.execute(
                update(Notebook)
                .where(Notebook.id == notebook_id, Notebook.status == NB_IMPORTING)
                .values(status=ACTIVE, updated_at=datetime.now(UTC))
            )
        return bool(getattr(result, "rowcount", 0))

    async def delete_row(self, notebook_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(Notebook).where(Notebook.id == notebook_id))

    async def purge_conversations(self, notebook_id: str) -> int:
        """Remove a notebook's conversations and their messages for good; how many."""
        ids = select(Conversation.id).where(Conversation.notebook_id == notebook_id)
        async with self.db.session() as s:
            n = int(
                await s.scalar(
                    select(func.count())
                    .select_from(Conversation)
                    .where(Conversation.notebook_id == notebook_id)
                )
                or 0
            )
            await s.execute(delete(Message).where(Message.conversation_id.in_(ids)))
            await s.execute(delete(Conversation).where(Conversation.notebook_id == notebook_id))
        return n

    async def deleting(self) -> builtins.list[Notebook]:
        async with self.db.session() as s:
            return builtins.list(
                (await s.scalars(select(Notebook).where(Notebook.status == NB_DELETING))).all()
            )

    async def counts(
        self, notebook_ids: builtins.list[str], *, conversations_of: str | None = None
    ) -> dict[str, NotebookCounts]:
        """Documents (all, completed), conversations (only `conversations_of`'s when given),
        bytes and chunks per notebook."""
        if not notebook_ids:
            return {}
        own = [Conversation.owner_id == conversations_of] if conversations_of is not None else []
        async with self.db.session() as s:
            docs = (
                await s.execute(
                    select(
                        Document.notebook_id,
                        func.count(),
                        func.sum(func.coalesce(Document.size, 0)),
                        func.sum(func.coalesce(Document.chunk_count, 0)),
                    )
                    .where(Document.notebook_id.in_(notebook_ids), Document.status != "deleting")
                    .group_by(Document.notebook_id)
                )
            ).all()
            done = dict(
                (
                    await s.execute(
                        select(Document.notebook_id, func.count())
                        .where(
                            Document.notebook_id.in_(notebook_ids),
                            Document.status == "completed",
                        )
                        .group_by(Document.notebook_id)
                    )
                )
                .tuples()
                .all()
            )
            convs = dict(
                (
                    await s.execute(
                        select(Conversation.notebook_id, func.count())
                        .where(
                            Conversation.notebook_id.in_(notebook_ids),
                            Conversation.status != "deleted",
                            *own,
                        )
                        .group_by(Conversation.notebook_id)
                    )
                )
                .tuples()
                .all()
            )
        by_doc = {r[0]: (int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in docs}
        out: dict[str, NotebookCounts] = {}
        for nid in notebook_ids:
            n, size, chunks = by_doc.get(nid, (0, 0, 0))
            out[nid] = NotebookCounts(
                documents=n,
                documents_completed=int(done.get(nid, 0)),
                conversations=int(convs.get(nid, 0)),
                size_bytes=size,
                chunks=chunks,
            )
        return out

    async def with_documents(self, limit: int = 2) -> builtins.list[str]:
        """Ids of (at most `limit`) notebooks that hold any document."""
        async with self.db.session() as s:
            return builtins.list(
                (await s.scalars(select(Document.notebook_id).distinct().limit(limit))).all()
            )

    # --- app_state ---------------------------------------------------------------------
    async def state(self, key: str) -> str | None:
        async with self.db.session() as s:
            row = await s.get(AppState, key)
        return row.value if row is not None else None

    async def set_state(self, key: str, value: str) -> None:
        async with self.db.session() as s:
            await s.merge(AppState(key=key, value=value))

    async def clear_state(self, key: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(AppState).where(AppState.key == key))
