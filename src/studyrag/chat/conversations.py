"""Conversations and their messages: creation, paging, soft delete, cleanup and statistics."""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from studyrag.db.models import Conversation, Message, new_id, utcnow
from studyrag.db.session import Database
from studyrag.errors import ConversationNotFound, InvalidChatRequest, MessageNotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TITLE = "New conversation"
TITLE_MAX_CHARS = 200
AUTO_TITLE_CHARS = 60
MAX_PAGE_SIZE = 100
CONVERSATION_STATUSES = ("active", "archived", "deleted")
MESSAGE_ROLES = ("user", "assistant", "system")
MESSAGE_STATUSES = ("complete", "incomplete", "error")
# Concurrent writers to one conversation can collide on (conversation_id, seq); a collision
# rolls the whole transaction back, so retrying is safe.
_WRITE_ATTEMPTS = 6
_DELETE_BATCH = 500


def as_utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC; naive values (what SQLite returns) are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    v = as_utc(value)
    return v.isoformat() if v is not None else None


def _utc(value: datetime) -> datetime:
    v = as_utc(value)
    assert v is not None
    return v


def derive_title(text: str, limit: int = AUTO_TITLE_CHARS) -> str:
    """A conversation title from a question: one line, cut on a word boundary."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat or DEFAULT_TITLE
    cut = flat[:limit]
    space = cut.rfind(" ")
    # A single very long word is cut mid-word rather than leaving a title of one letter.
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


# --- public schemas ----------------------------------------------------------------------
@dataclass(slots=True)
class ConversationPublic:
    """A conversation as the API shows it."""

    id: str
    title: str
    status: str
    metadata: dict[str, Any]
    message_count: int
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime | None = None
    deleted_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Conversation) -> ConversationPublic:
        """Copy a row, normalising timestamps to UTC."""
        return cls(
            id=row.id,
            title=row.title,
            status=row.status,
            metadata=dict(row.meta or {}),
            message_count=row.message_count,
            created_at=_utc(row.created_at),
            updated_at=_utc(row.updated_at),
            last_message_at=as_utc(row.last_message_at),
            deleted_at=as_utc(row.deleted_at),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ISO-8601 UTC timestamps."""
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "metadata": self.metadata,
            "message_count": self.message_count,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_message_at": _iso(self.last_message_at),
            "deleted_at": _iso(self.deleted_at),
        }


@dataclass(slots=True)
class MessagePublic:
    """A message as the API shows it."""

    id: str
    conversation_id: str
    seq: int
    role: str
    content: str
    sources: list[Any]
    metadata: dict[str, Any]
    status: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Message) -> MessagePublic:
        """Copy a row, normalising timestamps to UTC."""
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            seq=row.seq,
            role=row.role,
            content=row.content,
            sources=list(row.sources or []),
            metadata=dict(row.meta or {}),
            status=row.status,
            created_at=_utc(row.created_at),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with an ISO-8601 UTC timestamp."""
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "role": self.role,
            "content": self.content,
            "sources": self.sources,
            "metadata": self.metadata,
            "status": self.status,
            "created_at": _iso(self.created_at),
        }


@dataclass(slots=True)
class Turn:
    """A stored question, its answer's placeholder and the history that came before them."""

    conversation: ConversationPublic
    history: list[MessagePublic]
    user: MessagePublic
    assistant: MessagePublic


@dataclass(slots=True)
class ConversationPage:
    """One page of conversations, newest activity first."""

    items: list[ConversationPublic]
    total: int
    limit: int
    offset: int = 0
    next_cursor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "items": [c.to_dict() for c in self.items],
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
            "next_cursor": self.next_cursor,
        }


@dataclass(slots=True)
class MessagePage:
    """One page of messages; seq bounds are the cursors for the neighbouring pages."""

    items: list[MessagePublic]
    order: str
    has_more_before: bool
    has_more_after: bool

    @property
    def first_seq(self) -> int | None:
        return min((m.seq for m in self.items), default=None)

    @property
    def last_seq(self) -> int | None:
        return max((m.seq for m in self.items), default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; pass first_seq as before_seq (older) or last_seq as after_seq."""
        return {
            "items": [m.to_dict() for m in self.items],
            "order": self.order,
            "has_more_before": self.has_more_before,
            "has_more_after": self.has_more_after,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


@dataclass(slots=True)
class CleanupReport:
    """What cleanup() removed."""

    messages_removed: int = 0
    conversations_purged: int = 0
    messages_purged: int = 0
    conversations_touched: builtins.list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "messages_removed": self.messages_removed,
            "conversations_purged": self.conversations_purged,
            "messages_purged": self.messages_purged,
            "conversations_touched": len(self.conversations_touched),
        }


# --- cursors -----------------------------------------------------------------------------
def _encode_cursor(updated_at: datetime, conversation_id: str) -> str:
    raw = json.dumps([_utc(updated_at).isoformat(), conversation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, cid = json.loads(raw)
        return _utc(datetime.fromisoformat(stamp)), str(cid)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidChatRequest(
            "The conversation cursor is not valid.",
            hint="Pass next_cursor exactly as the previous page returned it, or omit it.",
        ) from exc


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidChatRequest(
            f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}.",
            details={"limit": limit, "max": MAX_PAGE_SIZE},
        )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_title(title: str) -> str:
    clean = " ".join(title.split())
    if not clean:
        raise InvalidChatRequest("A conversation title cannot be empty.")
    if len(clean) > TITLE_MAX_CHARS:
        raise InvalidChatRequest(f"A conversation title takes at most {TITLE_MAX_CHARS} chars.")
    return clean


def _percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class ConversationManager:
    """All SQL that touches conversations and messages."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- conversations -------------------------------------------------------------------
    async def create(
        self, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ConversationPublic:
        """Start an empty, active conversation."""
        now = utcnow()
        row = Conversation(
            id=new_id(),
            title=_check_title(title) if title is not None else DEFAULT_TITLE,
            status="active",
            meta=dict(metadata or {}),
            message_count=0,
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as s:
            s.add(row)
        return ConversationPublic.from_row(row)

    async def get(
        self, conversation_id: str, *, include_deleted: bool = False
    ) -> ConversationPublic:
        """The conversation, or ConversationNotFound (CHAT_005) when unknown or deleted."""
        async with self.db.session() as s:
            row = await self._row(s, conversation_id, include_deleted=include_deleted)
            return ConversationPublic.from_row(row)

    async def _row(
        self, s: AsyncSession, conversation_id: str, *, include_deleted: bool = False
    ) -> Conversation:
        row = await s.get(Conversation, conversation_id)
        if row is None or (row.status == "deleted" and not include_deleted):
            raise ConversationNotFound(f"No conversation with id {conversation_id!r}.")
        return row

    async def list(
        self,
        *,
        status: str | None = None,
        title_search: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
        offset: int = 0,
    ) -> ConversationPage:
        """Conversations by latest activity; page with `cursor` (keyset) or `offset`.

        Without `status`, active and archived conversations are listed (never deleted ones).
        """
        _check_limit(limit)
        if offset < 0:
            raise InvalidChatRequest("offset cannot be negative.")
        if cursor and offset:
            raise InvalidChatRequest("Use either cursor or offset, not both.")
        where: builtins.list[ColumnElement[bool]] = []
        if status is None:
            where.append(Conversation.status != "deleted")
        elif status in CONVERSATION_STATUSES:
            where.append(Conversation.status == status)
        else:
            raise InvalidChatRequest(
                f"Unknown conversation status {status!r}.",
                hint=f"Use one of: {', '.join(CONVERSATION_STATUSES)}.",
            )
        if title_search and title_search.strip():
            pattern = f"%{_like_escape(title_search.strip())}%"
            where.append(Conversation.title.ilike(pattern, escape="\\"))
        for column, bound, after in (
            (Conversation.created_at, created_after, True),
            (Conversation.created_at, created_before, False),
            (Conversation.updated_at, updated_after, True),
            (Conversation.updated_at, updated_before, False),
        ):
            if bound is not None:
                where.append(column > _utc(bound) if after else column < _utc(bound))
        page_where = list(where)
        if cursor:
            stamp, cid = _decode_cursor(cursor)
            page_where.append(
                or_(
                    Conversation.updated_at < stamp,
                    (Conversation.updated_at == stamp) & (Conversation.id < cid),
                )
            )
        stmt = (
            select(Conversation)
            .where(*page_where)
            .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
            .offset(offset)
            .limit(limit + 1)  # one extra row says whether a next page exists
        )
        count = select(func.count()).select_from(Conversation).where(*where)
        async with self.db.session() as s:
            rows = builtins.list((await s.scalars(stmt)).all())
            total = int(await s.scalar(count) or 0)
        more = len(rows) > limit
        items = [ConversationPublic.from_row(r) for r in rows[:limit]]
        next_cursor = _encode_cursor(items[-1].updated_at, items[-1].id) if more else None
        return ConversationPage(
            items=items, total=total, limit=limit, offset=offset, next_cursor=next_cursor
        )

    async def update(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        status: str | None = None,
    ) -> ConversationPublic:
        """Rename, replace metadata, or archive/unarchive; deletion goes through soft_delete."""
        if status is not None and status not in ("active", "archived"):
            raise InvalidChatRequest(
                f"Cannot set status {status!r} here.",
                hint="Use 'active' or 'archived'; delete with DELETE /api/chat/conversations/{id}.",
            )
        async with self.db.session() as s:
            row = await self._row(s, conversation_id)
            if title is not None:
                row.title = _check_title(title)
            if metadata is not None:
                row.meta = dict(metadata)
            if status is not None:
                row.status = status
            row.updated_at = utcnow()
            await s.flush()
            return ConversationPublic.from_row(row)

    async def soft_delete(self, conversation_id: str) -> None:
        """Mark the conversation deleted; it is hidden at once and purged by cleanup()."""
        now = utcnow()
        async with self.db.session() as s:
            row = await self._row(s, conversation_id)
            row.status = "deleted"
            row.deleted_at = now
            row.updated_at = now

    # --- messages ------------------------------------------------------------------------
    async def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        *,
        sources: builtins.list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
        status: str = "complete",
    ) -> MessagePublic:
        """Append a message with the next seq, in one transaction with the counters."""
        if role not in MESSAGE_ROLES:
            raise InvalidChatRequest(f"Unknown message role {role!r}.")
        if status not in MESSAGE_STATUSES:
            raise InvalidChatRequest(f"Unknown message status {status!r}.")
        return await _retrying(
            conversation_id,
            lambda: self._append(
                conversation_id, role, content, sources or [], metadata or {}, status
            ),
        )

    async def _append(
        self,
        conversation_id: str,
        role: str,
        content: str,
        sources: builtins.list[Any],
        metadata: dict[str, Any],
        status: str,
    ) -> MessagePublic:
        now = utcnow()
        async with self.db.session() as s:
            title, seq = await _bump(s, conversation_id, 1, now)
            row = Message(
                id=new_id(),
                conversation_id=conversation_id,
                seq=seq,
                role=role,
                content=content,
                sources=list(sources),
                meta=dict(metadata),
                status=status,
                created_at=now,
            )
            s.add(row)
            await s.flush()
            if role == "user" and title == DEFAULT_TITLE and content.strip():
                await _set_title(s, conversation_id, derive_title(content))
            return MessagePublic.from_row(row)

    async def start_turn(
        self,
        conversation_id: str | None,
        question: str,
        *,
        history_limit: int,
        answer_metadata: dict[str, Any] | None = None,
    ) -> Turn:
        """Store a question and its answer's (incomplete) placeholder in one transaction.

        Creates the conversation when `conversation_id` is None. The history returned is
        what came before this question. One commit instead of four round trips keeps the
        time to the first answer token low.
        """
        question = question.strip()
        if not question:
            raise InvalidChatRequest("The message is empty.", hint="Type a question.")
        meta = dict(answer_metadata or {})
        if conversation_id is None:
            return await self._turn(None, question, history_limit, meta)
        cid = conversation_id
        return await _retrying(cid, lambda: self._turn(cid, question, history_limit, meta))

    async def _turn(
        self,
        conversation_id: str | None,
        question: str,
        history_limit: int,
        answer_metadata: dict[str, Any],
    ) -> Turn:
        now = utcnow()
        history: builtins.list[Message] = []
        seq = 0
        async with self.db.session() as s:
            if conversation_id is None:
                conv = Conversation(
                    id=new_id(),
                    title=derive_title(question),
                    status="active",
                    meta={},
                    message_count=2,
                    last_seq=2,
                    created_at=now,
                    updated_at=now,
                    last_message_at=now,
                )
                s.add(conv)
            else:
                title, last = await _bump(s, conversation_id, 2, now)
                seq = last - 2
                if title == DEFAULT_TITLE:
                    await _set_title(s, conversation_id, derive_title(question))
                if history_limit > 0:
                    stmt = _history_stmt(conversation_id, history_limit)
                    history = builtins.list((await s.scalars(stmt)).all())
            cid = conv.id if conversation_id is None else conversation_id
            user, answer = (
                Message(
                    id=new_id(),
                    conversation_id=cid,
                    seq=seq + n,
                    role=role,
                    content=content,
                    sources=[],
                    meta=meta,
                    status=status,
                    created_at=now,
                )
                for n, role, content, meta, status in (
                    (1, "user", question, {}, "complete"),
                    (2, "assistant", "", answer_metadata, "incomplete"),
                )
            )
            s.add_all([user, answer])
            await s.flush()
            if conversation_id is not None:
                found = await s.get(Conversation, cid, populate_existing=True)
                assert found is not None
                conv = found
            return Turn(
                conversation=ConversationPublic.from_row(conv),
                history=[MessagePublic.from_row(m) for m in reversed(history)],
                user=MessagePublic.from_row(user),
                assistant=MessagePublic.from_row(answer),
            )

    async def update_message(
        self,
        message_id: str,
        *,
        content: str | None = None,
        status: str | None = None,
        sources: builtins.list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> MessagePublic:
        """Change a message in place (how a streamed answer is finalised); metadata is replaced."""
        if status is not None and status not in MESSAGE_STATUSES:
            raise InvalidChatRequest(f"Unknown message status {status!r}.")
        async with self.db.session() as s:
            row = await s.get(Message, message_id)
            if row is None:
                raise MessageNotFound(f"No message with id {message_id!r}.")
            if content is not None:
                row.content = content
            if status is not None:
                row.status = status
            if sources is not None:
                row.sources = list(sources)
            if metadata is not None:
                row.meta = dict(metadata)
            await s.execute(
                update(Conversation)
                .where(Conversation.id == row.conversation_id)
                .values(updated_at=utcnow())
            )
            await s.flush()
            return MessagePublic.from_row(row)

    async def get_message(
        self, message_id: str, *, conversation_id: str | None = None
    ) -> MessagePublic:
        """The message, or MessageNotFound (CHAT_008); deleted conversations hide theirs."""
        stmt = (
            select(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.id == message_id, Conversation.status != "deleted")
        )
        if conversation_id is not None:
            stmt = stmt.where(Message.conversation_id == conversation_id)
        async with self.db.session() as s:
            row = await s.scalar(stmt)
            if row is None:
                raise MessageNotFound(f"No message with id {message_id!r}.")
            return MessagePublic.from_row(row)

    async def list_messages(
        self,
        conversation_id: str,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        after_seq: int | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> MessagePage:
        """A page of messages next to a seq cursor, sorted by `order`.

        after_seq → the messages right after it; before_seq → the ones right before it;
        neither → the oldest page (asc) or the newest page (desc).
        """
        _check_limit(limit)
        if order not in ("asc", "desc"):
            raise InvalidChatRequest("order must be 'asc' or 'desc'.")
        in_conv = Message.conversation_id == conversation_id
        stmt = select(Message).where(in_conv)
        if after_seq is not None:
            stmt = stmt.where(Message.seq > after_seq)
        if before_seq is not None:
            stmt = stmt.where(Message.seq < before_seq)
        # Walk away from the cursor so the page is the one adjacent to it.
        newest_first = after_seq is None and (before_seq is not None or order == "desc")
        stmt = stmt.order_by(Message.seq.desc() if newest_first else Message.seq.asc())
        async with self.db.session() as s:
            await self._row(s, conversation_id)
            rows = builtins.list((await s.scalars(stmt.limit(limit))).all())
            seqs = [r.seq for r in rows]
            if seqs:
                older = await s.scalar(select(exists().where(in_conv, Message.seq < min(seqs))))
                newer = await s.scalar(select(exists().where(in_conv, Message.seq > max(seqs))))
            else:
                older = after_seq is not None and await s.scalar(
                    select(exists().where(in_conv, Message.seq <= after_seq))
                )
                newer = before_seq is not None and await s.scalar(
                    select(exists().where(in_conv, Message.seq >= before_seq))
                )
        items = sorted((MessagePublic.from_row(r) for r in rows), key=lambda m: m.seq)
        if order == "desc":
            items.reverse()
        return MessagePage(
            items=items, order=order, has_more_before=bool(older), has_more_after=bool(newer)
        )

    async def history(
        self, conversation_id: str, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[MessagePublic]:
        """The last `limit` complete user/assistant messages, oldest first."""
        if limit <= 0:
            return []
        stmt = _history_stmt(conversation_id, limit, before_seq=before_seq)
        async with self.db.session() as s:
            rows = builtins.list((await s.scalars(stmt)).all())
        return [MessagePublic.from_row(r) for r in reversed(rows)]

    # --- maintenance ---------------------------------------------------------------------
    async def cleanup(
        self,
        conversation_id: str | None = None,
        *,
        keep_last: int | None = None,
        older_than: timedelta | None = None,
        drop_incomplete: bool = False,
        purge_deleted_older_than: timedelta | None = None,
    ) -> CleanupReport:
        """Remove messages by any of the rules (their union), purge old deleted conversations.

        keep_last: keep only the newest N messages of each conversation; older_than: drop
        messages created before now - older_than; drop_incomplete: drop incomplete messages
        (including one being streamed right now, so run it when nothing is generating).
        """
        if keep_last is not None and keep_last < 0:
            raise InvalidChatRequest("keep_last cannot be negative.")
        report = CleanupReport()
        now = utcnow()
        async with self.db.session() as s:
            if conversation_id is not None:
                await self._row(s, conversation_id, include_deleted=True)
            scope: builtins.list[ColumnElement[bool]] = []
            if conversation_id is not None:
                scope.append(Message.conversation_id == conversation_id)
            doomed: dict[str, str] = {}  # message id -> conversation id
            if keep_last is not None:
                ranked = (
                    select(
                        Message.id.label("id"),
                        Message.conversation_id.label("cid"),
                        func.row_number()
                        .over(partition_by=Message.conversation_id, order_by=Message.seq.desc())
                        .label("rn"),
                    )
                    .where(*scope)
                    .subquery()
                )
                rows = await s.execute(
                    select(ranked.c.id, ranked.c.cid).where(ranked.c.rn > keep_last)
                )
                doomed.update(rows.tuples().all())
            if older_than is not None:
                rows = await s.execute(
                    select(Message.id, Message.conversation_id).where(
                        *scope, Message.created_at < now - older_than
                    )
                )
                doomed.update(rows.tuples().all())
            if drop_incomplete:
                rows = await s.execute(
                    select(Message.id, Message.conversation_id).where(
                        *scope, Message.status == "incomplete"
                    )
                )
                doomed.update(rows.tuples().all())
            for batch in _batches(builtins.list(doomed)):
                await s.execute(delete(Message).where(Message.id.in_(batch)))
            report.messages_removed = len(doomed)
            touched = sorted(set(doomed.values()))
            await self._recount(s, touched)
            report.conversations_touched = touched

            if purge_deleted_older_than is not None:
                purge_where = [
                    Conversation.status == "deleted",
                    Conversation.deleted_at < now - purge_deleted_older_than,
                ]
                if conversation_id is not None:
                    purge_where.append(Conversation.id == conversation_id)
                found = await s.scalars(select(Conversation.id).where(*purge_where))
                ids = builtins.list(found.all())
                for batch in _batches(ids):
                    # Explicit, not ON DELETE CASCADE, to count them and not depend on the pragma.
                    gone = await s.execute(
                        delete(Message)
                        .where(Message.conversation_id.in_(batch))
                        .returning(Message.id)
                    )
                    report.messages_purged += len(gone.all())
                    await s.execute(delete(Conversation).where(Conversation.id.in_(batch)))
                report.conversations_purged = len(ids)
        return report

    async def _recount(self, s: AsyncSession, conversation_ids: Sequence[str]) -> None:
        """Make message_count and last_message_at match the remaining messages."""
        for batch in _batches(conversation_ids):
            counted = (
                select(func.count())
                .where(Message.conversation_id == Conversation.id)
                .correlate(Conversation)
                .scalar_subquery()
            )
            latest = (
                select(func.max(Message.created_at))
                .where(Message.conversation_id == Conversation.id)
                .correlate(Conversation)
                .scalar_subquery()
            )
            await s.execute(
                update(Conversation)
                .where(Conversation.id.in_(batch))
                .values(message_count=counted, last_message_at=latest)
            )

    async def statistics(self) -> dict[str, Any]:
        """Counts by status and role, response times, tokens generated and errors by code."""
        is_assistant = Message.role == "assistant"
        total_time = Message.meta[("stats", "total_time")].as_float()
        completion = Message.meta[("stats", "completion_tokens")].as_integer()
        error_code = Message.meta["error_code"].as_string()
        async with self.db.session() as s:
            by_status = await s.execute(
                select(Conversation.status, func.count()).group_by(Conversation.status)
            )
            conv_counts = {str(k): int(v) for k, v in by_status.tuples().all()}
            by_role = await s.execute(select(Message.role, func.count()).group_by(Message.role))
            role_counts = {str(k): int(v) for k, v in by_role.tuples().all()}
            by_msg_status = await s.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
            status_counts = {str(k): int(v) for k, v in by_msg_status.tuples().all()}
            times = [
                float(t)
                for t in (
                    await s.scalars(
                        select(total_time).where(
                            is_assistant, Message.status == "complete", total_time.is_not(None)
                        )
                    )
                ).all()
                if t is not None
            ]
            tokens = await s.scalar(
                select(func.coalesce(func.sum(completion), 0)).where(is_assistant)
            )
            errors = await s.execute(
                select(error_code, func.count())
                .where(is_assistant, Message.status == "error")
                .group_by(error_code)
            )
            error_counts = {str(k or "unknown"): int(v) for k, v in errors.tuples().all()}
        for name in CONVERSATION_STATUSES:
            conv_counts.setdefault(name, 0)
        return {
            "conversations": {"total": sum(conv_counts.values()), "by_status": conv_counts},
            "messages": {
                "total": sum(role_counts.values()),
                "by_role": role_counts,
                "by_status": status_counts,
            },
            "response_time": {
                "count": len(times),
                "mean_seconds": sum(times) / len(times) if times else None,
                "p95_seconds": _percentile(times, 95),
            },
            "tokens_generated": int(tokens or 0),
            "errors_by_code": error_counts,
        }


def _batches(items: Iterable[str], size: int = _DELETE_BATCH) -> Iterable[builtins.list[str]]:
    batch: builtins.list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- shared write steps ------------------------------------------------------------------
async def _retrying(conversation_id: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
    """Run a write transaction again when a concurrent writer took the same seq."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            return await attempt_once()
        except (IntegrityError, OperationalError) as exc:
            # IntegrityError: another writer took this seq. OperationalError: SQLite's
            # "database is locked" outlasting busy_timeout. Anything else is re-raised.
            if isinstance(exc, OperationalError) and "locked" not in str(exc).lower():
                raise
            if attempt == _WRITE_ATTEMPTS:
                raise
            log.debug("write retry %d for %s: %s", attempt, conversation_id, exc)
            await asyncio.sleep(0.005 * attempt)
    raise AssertionError("unreachable")


async def _bump(
    s: AsyncSession, conversation_id: str, added: int, now: datetime
) -> tuple[str, int]:
    """Count `added` messages on a live conversation: its title and its new last seq.

    The seqs last - added + 1 .. last are the caller's. The UPDATE takes the write lock
    (SQLite) or the row lock (PostgreSQL), which serialises writers of one conversation; the
    unique index on (conversation_id, seq) remains the backstop. Raises ConversationNotFound.
    """
    bumped = await s.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.status != "deleted")
        .values(
            message_count=Conversation.message_count + added,
            last_seq=Conversation.last_seq + added,
            last_message_at=now,
            updated_at=now,
        )
        .returning(Conversation.title, Conversation.last_seq)
    )
    row = bumped.one_or_none()
    if row is None:
        raise ConversationNotFound(f"No conversation with id {conversation_id!r}.")
    return str(row[0]), int(row[1])


async def _set_title(s: AsyncSession, conversation_id: str, title: str) -> None:
    await s.execute(
        update(Conversation).where(Conversation.id == conversation_id).values(title=title)
    )


def _history_stmt(conversation_id: str, limit: int, *, before_seq: int | None = None) -> Any:
    """The last `limit` complete user/assistant messages, newest first."""
    stmt = select(Message).where(
        Message.conversation_id == conversation_id,
        Message.role.in_(("user", "assistant")),
        Message.status == "complete",
    )
    if before_seq is not None:
        stmt = stmt.where(Message.seq < before_seq)
    return stmt.order_by(Message.seq.desc()).limit(limit)
