"""What a user's notebooks hold, for the storage quota (auth/quotas.py)."""

from __future__ import annotations

from sqlalchemy import func, select

from studyrag.db.models import Document, Notebook
from studyrag.db.session import Database

# Rows on their way out no longer count: their originals go with them.
_GONE = "deleting"


class UsageRepo:
    """Bytes of originals per owner, summed in SQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def stored_bytes(self, owner_id: str | None) -> int:
        """The sizes of every document in the notebooks `owner_id` owns (None: the local
        owner's), shared or not; one file kept in two notebooks counts twice."""
        owner = Notebook.owner_id.is_(None) if owner_id is None else Notebook.owner_id == owner_id
        stmt = (
            select(func.coalesce(func.sum(Document.size), 0))
            .join(Notebook, Notebook.id == Document.notebook_id)
            .where(owner, Notebook.status != _GONE, Document.status != _GONE)
        )
        async with self.db.session() as s:
            return int(await s.scalar(stmt) or 0)

    async def notebook_owner(self, notebook_id: str) -> str | None:
        """Whose storage a document added to `notebook_id` uses (None: the local owner)."""
        async with self.db.session() as s:
            return await s.scalar(select(Notebook.owner_id).where(Notebook.id == notebook_id))
