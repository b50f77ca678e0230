"""Conversation and message persistence: all the SQL the chat layer runs, and its vocabulary."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from studyrag.auth.context import acting_owner
from studyrag.db.models import Conversation, Message, new_id, utcnow
from studyrag.db.repo import resolve_prefix
from studyrag.db.session import Database
from studyrag.errors import ConversationNotFound, MessageNotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

# The title of a conversation nobody has named yet; its first question names it.
DEFAULT_TITLE = "New conversation"
TITLE_MAX_CHARS = 200  # the width of conversations.title
CONVERSATION_STATUSES = ("active", "archived", "deleted")
MESSAGE_ROLES = ("user", "assistant", "system")
MESSAGE_STATUSES = ("complete", "incomplete", "error")
# Concurrent writers to one conversation can collide on (conversation_id, seq); a collision
# rolls the whole transaction back, so retrying is safe.
_WRITE_ATTEMPTS = 6
_DELETE_BATCH = 500


@dataclass(slots=True)
class TurnRows:
    """The rows one turn wrote, and the history that came before it (oldest first)."""

    conversation: Conversation
    history: builtins.list[Message]
    user: Message
    assistant: Message


@dataclass(slots=True)
class MessageWindow:
    """One page of messages (in seq order) and whether more lie on either side."""

    rows: builtins.list[Message]
    older: bool
    newer: bool


@dataclass(slots=True)
class CleanupCounts:
    """What one cleanup transaction removed."""

    messages_removed: int = 0
    conversations_touched: builtins.list[str] = field(default_factory=list)
    conversations_purged: int = 0
    messages_purged: int = 0


@dataclass(slots=True)
class StoredCounts:
    """The raw numbers behind the chat statistics."""

    conversations_by_status: dict[str, int]
    messages_by_role: dict[str, int]
    messages_by_status: dict[str, int]
    response_times: builtins.list[float]  # total_time of complete answers, in seconds
    tokens_generated: int
    errors_by_code: dict[str, int]


class ConversationRepo:
    """All SQL that touches conversations and messages; each method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- conversations -------------------------------------------------------------------
    async def create(
        self, *, title: str, metadata: dict[str, Any], notebook_id: str
    ) -> Conversation:
        """Insert an empty, active conversation in a notebook."""
        now = utcnow()
        row = Conversation(
            id=new_id(),
            notebook_id=notebook_id,
            owner_id=acting_owner(),
            title=title,
            status="active",
            meta=dict(metadata),
            message_count=0,
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as s:
            s.add(row)
        return row

    async def get(self, conversation_id: str, *, include_deleted: bool = False) -> Conversation:
        """The row, or ConversationNotFound (CHAT_005) when unknown or deleted."""
        async with self.db.session() as s:
            return await _conversation(s, conversation_id, include_deleted=include_deleted)

    async def resolve_id_prefix(self, prefix: str) -> str:
        """The id of the one conversation (not deleted) whose id starts with `prefix`.

        A full id or at least 4 characters, as git: ConversationNotFound (CHAT_005) when none
        matches, AmbiguousId (REQUEST_003) with the candidates when several do.
        """
        return await resolve_prefix(
            self.db,
            prefix,
            id_column=Conversation.id,
            label_column=Conversation.title,
            visible=Conversation.status != "deleted",
            kind="conversation",
            not_found=ConversationNotFound,
        )

    async def notebook_of(self, conversation_id: str) -> str:
        """The notebook a (not deleted) conversation belongs to; CHAT_005 when unknown."""
        async with self.db.session() as s:
            row = await _conversation(s, conversation_id, include_deleted=False)
        return row.notebook_id

    async def list(
        self,
        *,
        notebook_id: str | None = None,
        owner_id: str | None = None,
        status: str | None,
        title_contains: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        updated_after: datetime | None,
        updated_before: datetime | None,
        after: tuple[datetime, str] | None,
        offset: int,
        limit: int,
    ) -> tuple[builtins.list[Conversation], int, bool]:
        """(rows by latest activity, total matching, whether a next page exists).

        `after` is a keyset cursor (updated_at, id): only rows after it are returned. Without
        `status`, active and archived conversations match (never deleted ones).
        """
        where: builtins.list[ColumnElement[bool]] = []
        if notebook_id is not None:
            where.append(Conversation.notebook_id == notebook_id)
        if owner_id is not None:
            where.append(Conversation.owner_id == owner_id)
        if status is None:
            where.append(Conversation.status != "deleted")
        else:
            where.append(Conversation.status == status)
        if title_contains:
            pattern = f"%{_like_escape(title_contains)}%"
            where.append(Conversation.title.ilike(pattern, escape="\\"))
        for column, bound, is_after in (
            (Conversation.created_at, created_after, True),
            (Conversation.created_at, created_before, False),
            (Conversation.updated_at, updated_after, True),
            (Conversation.updated_at, updated_before, False),
        ):
            if bound is not None:
                where.append(column > bound if is_after else column < bound)
        page_where = list(where)
        if after is not None:
            stamp, cid = after
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
        return rows[:limit], total, len(rows) > limit

    async def update(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        status: str | None = None,
    ) -> Conversation:
        """Change the given fields of a live conversation and touch updated_at."""
        async with self.db.session() as s:
            row = await _conversation(s, conversation_id)
            if title is not None:
                row.title = title
            if metadata is not None:
                row.meta = dict(metadata)
            if status is not None:
                row.status = status
            row.updated_at = utcnow()
            await s.flush()
            return row

    async def soft_delete(self, conversation_id: str) -> None:
        """Mark a live conversation deleted now."""
        now = utcnow()
        async with self.db.session() as s:
            row = await _conversation(s, conversation_id)
            row.status = "deleted"
            row.deleted_at = now
            row.updated_at = now

    # --- messages ------------------------------------------------------------------------
    async def append_message(
        self,
        conversation_id: str,
        *,
        role: str,
        content: str,
        sources: builtins.list[Any],
        metadata: dict[str, Any],
        status: str,
        title: str | None,
    ) -> Message:
        """Append a message with the next seq, in one transaction with the counters.

        `title` names the conversation if it still has the default title.
        """
        return await _retrying(
            conversation_id,
            lambda: self._append(conversation_id, role, content, sources, metadata, status, title),
        )

    async def _append(
        self,
        conversation_id: str,
        role: str,
        content: str,
        sources: builtins.list[Any],
        metadata: dict[str, Any],
        status: str,
        title: str | None,
    ) -> Message:
        now = utcnow()
        async with self.db.session() as s:
            current, seq = await _bump(s, conversation_id, 1, now)
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
            if title is not None and current == DEFAULT_TITLE:
                await _set_title(s, conversation_id, title)
            return row

    async def start_turn(
        self,
        conversation_id: str | None,
        *,
        question: str,
        title: str,
        history_limit: int,
        answer_metadata: dict[str, Any],
        notebook_id: str = "",
    ) -> TurnRows:
        """A question and its answer's (incomplete) placeholder, in one transaction.

        Creates the conversation (named `title`, in `notebook_id`) when `conversation_id` is
        None; an existing one still under the default title is renamed `title`.
        """
        if conversation_id is None:
            return await self._turn(
                None, question, title, history_limit, answer_metadata, notebook_id
            )
        cid = conversation_id
        return await _retrying(
            cid, lambda: self._turn(cid, question, title, history_limit, answer_metadata, "")
        )

    async def _turn(
        self,
        conversation_id: str | None,
        question: str,
        title: str,
        history_limit: int,
        answer_metadata: dict[str, Any],
        notebook_id: str,
    ) -> TurnRows:
        now = utcnow()
        history: builtins.list[Message] = []
        seq = 0
        async with self.db.session() as s:
            if conversation_id is None:
                conv = Conversation(
                    id=new_id(),
                    notebook_id=notebook_id,
                    owner_id=acting_owner(),
                    title=title,
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
                current, last = await _bump(s, conversation_id, 2, now)
                seq = last - 2
                if current == DEFAULT_TITLE:
                    await _set_title(s, conversation_id, title)
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
            return TurnRows(conversation=conv, history=history[::-1], user=user, assistant=answer)

    async def update_message(
        self,
        message_id: str,
        *,
        content: str | None = None,
        status: str | None = None,
        sources: builtins.list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        """Change a message in place and touch its conversation; MessageNotFound (CHAT_008)."""
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
            return row

    async def get_message(self, message_id: str, *, conversation_id: str | None) -> Message:
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
        return row

    async def list_messages(
        self,
        conversation_id: str,
        *,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        newest_first: bool,
    ) -> MessageWindow:
        """Up to `limit` messages walking away from the seq cursor(s); ConversationNotFound."""
        in_conv = Message.conversation_id == conversation_id
        stmt = select(Message).where(in_conv)
        if after_seq is not None:
            stmt = stmt.where(Message.seq > after_seq)
        if before_seq is not None:
            stmt = stmt.where(Message.seq < before_seq)
        stmt = stmt.order_by(Message.seq.desc() if newest_first else Message.seq.asc())
        async with self.db.session() as s:
            await _conversation(s, conversation_id)
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
        rows.sort(key=lambda m: m.seq)
        return MessageWindow(rows=rows, older=bool(older), newer=bool(newer))

    async def history(
        self, conversation_id: str, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[Message]:
        """The last `limit` complete user/assistant messages, oldest first."""
        stmt = _history_stmt(conversation_id, limit, before_seq=before_seq)
        async with self.db.session() as s:
            rows = builtins.list((await s.scalars(stmt)).all())
        return rows[::-1]

    # --- archives (notebook export / import) ---------------------------------------------
    async def of_notebook(
        self, notebook_id: str, *, owner_id: str | None = None
    ) -> builtins.list[Conversation]:
        """A notebook's conversations that are not deleted (only `owner_id`'s when given),
        oldest first (export)."""
        where = [Conversation.notebook_id == notebook_id, Conversation.status != "deleted"]
        if owner_id is not None:
            where.append(Conversation.owner_id == owner_id)
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Conversation)
                        .where(*where)
                        .order_by(Conversation.created_at, Conversation.id)
                    )
                ).all()
            )

    async def all_messages(self, conversation_id: str) -> builtins.list[Message]:
        """Every message of a conversation in seq order (export)."""
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Message)
                        .where(Message.conversation_id == conversation_id)
                        .order_by(Message.seq)
                    )
                ).all()
            )

    async def insert_archived(
        self,
        *,
        notebook_id: str,
        conversation: dict[str, Any],
        messages: builtins.list[dict[str, Any]],
    ) -> str:
        """A conversation and its messages as they were exported, in one transaction."""
        cid = new_id()
        async with self.db.session() as s:
            s.add(
                Conversation(
                    id=cid,
                    notebook_id=notebook_id,
                    owner_id=acting_owner(),
                    message_count=len(messages),
                    **conversation,
                )
            )
            await s.flush()
            s.add_all(Message(id=new_id(), conversation_id=cid, **m) for m in messages)
        return cid

    # --- maintenance ---------------------------------------------------------------------
    async def cleanup(
        self,
        conversation_id: str | None,
        *,
        keep_last: int | None,
        created_before: datetime | None,
        drop_incomplete: bool,
        purge_deleted_before: datetime | None,
    ) -> CleanupCounts:
        """Delete the messages any rule selects and purge deleted conversations, atomically.

        keep_last: all but the newest N of each conversation; created_before: those older;
        drop_incomplete: the incomplete ones; purge_deleted_before: conversations deleted
        before then, with their messages. A conversation id limits every rule to it.
        """
        counts = CleanupCounts()
        async with self.db.session() as s:
            scope: builtins.list[ColumnElement[bool]] = []
            if conversation_id is not None:
                await _conversation(s, conversation_id, include_deleted=True)
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
            if created_before is not None:
                rows = await s.execute(
                    select(Message.id, Message.conversation_id).where(
                        *scope, Message.created_at < created_before
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
            counts.messages_removed = len(doomed)
            touched = sorted(set(doomed.values()))
            await _recount(s, touched)
            counts.conversations_touched = touched

            if purge_deleted_before is not None:
                purge_where = [
                    Conversation.status == "deleted",
                    Conversation.deleted_at < purge_deleted_before,
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
                    counts.messages_purged += len(gone.all())
                    await s.execute(delete(Conversation).where(Conversation.id.in_(batch)))
                counts.conversations_purged = len(ids)
        return counts

    async def counts(self) -> StoredCounts:
        """Counts by status and role, complete answers' response times, tokens and errors."""
        is_assistant = Message.role == "assistant"
        total_time = Message.meta[("stats", "total_time")].as_float()
        completion = Message.meta[("stats", "completion_tokens")].as_integer()
        error_code = Message.meta["error_code"].as_string()
        async with self.db.session() as s:
            by_status = await s.execute(
                select(Conversation.status, func.count()).group_by(Conversation.status)
            )
            by_role = await s.execute(select(Message.role, func.count()).group_by(Message.role))
            by_msg_status = await s.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
            times = await s.scalars(
                select(total_time).where(
                    is_assistant, Message.status == "complete", total_time.is_not(None)
                )
            )
            tokens = await s.scalar(
                select(func.coalesce(func.sum(completion), 0)).where(is_assistant)
            )
            errors = await s.execute(
                # Failed answers: stored as error, or as incomplete when cut off mid-stream.
                select(error_code, func.count())
                .where(is_assistant, error_code.is_not(None))
                .group_by(error_code)
            )
            return StoredCounts(
                conversations_by_status={str(k): int(v) for k, v in by_status.tuples().all()},
                messages_by_role={str(k): int(v) for k, v in by_role.tuples().all()},
                messages_by_status={str(k): int(v) for k, v in by_msg_status.tuples().all()},
                response_times=[float(t) for t in times.all() if t is not None],
                tokens_generated=int(tokens or 0),
                errors_by_code={str(k or "unknown"): int(v) for k, v in errors.tuples().all()},
            )


# --- shared steps ------------------------------------------------------------------------
async def _conversation(
    s: AsyncSession, conversation_id: str, *, include_deleted: bool = False
) -> Conversation:
    row = await s.get(Conversation, conversation_id)
    if row is None or (row.status == "deleted" and not include_deleted):
        raise ConversationNotFound(f"No conversation with id {conversation_id!r}.")
    return row


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


async def _recount(s: AsyncSession, conversation_ids: Sequence[str]) -> None:
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


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _batches(items: Iterable[str], size: int = _DELETE_BATCH) -> Iterable[builtins.list[str]]:
    batch: builtins.list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
