"""Conversations and their messages: the rules (titles, statuses, paging) over their store."""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from studyrag.chat.maintenance import cleanup
from studyrag.chat.statistics import statistics
from studyrag.db.conversations import (
    CONVERSATION_STATUSES,
    DEFAULT_TITLE,
    MESSAGE_ROLES,
    MESSAGE_STATUSES,
    TITLE_MAX_CHARS,
    ConversationRepo,
)
from studyrag.db.session import Database
from studyrag.errors import InvalidChatRequest
from studyrag.schemas.base import as_utc
from studyrag.schemas.conversations import (
    CleanupReport,
    ConversationPage,
    ConversationPublic,
    MessagePage,
    MessagePublic,
)

AUTO_TITLE_CHARS = 60
MAX_PAGE_SIZE = 100


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


@dataclass(slots=True)
class Turn:
    """A stored question, its answer's placeholder and the history that came before them."""

    conversation: ConversationPublic
    history: list[MessagePublic]
    user: MessagePublic
    assistant: MessagePublic


class ConversationManager:
    """Creates, pages, changes and deletes conversations and messages, checking every input."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.repo = ConversationRepo(db)
        from studyrag.db.notebooks import NotebookRepo

        # Conversations belong to a notebook; without one named, the default notebook
        # (which is never deleted, so its id is kept once read).
        self.notebooks = NotebookRepo(db)
        self._default_notebook: str | None = None
        # Told of every conversation created, changed or deleted (the notebook's events).
        self.on_change: Callable[[str, ConversationPublic], None] | None = None

    def _changed(self, kind: str, conversation: ConversationPublic) -> ConversationPublic:
        if self.on_change is not None:
            self.on_change(kind, conversation)
        return conversation

    async def default_notebook(self) -> str:
        if self._default_notebook is None:
            self._default_notebook = (await self.notebooks.ensure_default()).id
        return self._default_notebook

    async def scope(self, conversation_id: str | None, notebook_id: str | None) -> str:
        """The notebook a turn runs in: its conversation's, else the one named (checked),
        else the default. CHAT_006 when a conversation is asked for in another notebook."""
        if conversation_id is not None:
            owner = await self.repo.notebook_of(conversation_id)
            if notebook_id and owner and notebook_id != owner:
                raise InvalidChatRequest(
                    "This conversation belongs to another notebook.",
                    details={"notebook_id": owner},
                    hint="Leave notebook_id out, or start a new conversation in that notebook.",
                )
            if owner:
                return owner
        if notebook_id:
            return (await self.notebooks.get(notebook_id)).id
        return await self.default_notebook()

    # --- conversations -------------------------------------------------------------------
    async def create(
        self,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        notebook_id: str | None = None,
    ) -> ConversationPublic:
        """Start an empty, active conversation (in the default notebook unless named)."""
        row = await self.repo.create(
            title=_check_title(title) if title is not None else DEFAULT_TITLE,
            metadata=dict(metadata or {}),
            notebook_id=await self.scope(None, notebook_id),
        )
        return self._changed("conversation_created", ConversationPublic.from_row(row))

    async def get(
        self, conversation_id: str, *, include_deleted: bool = False
    ) -> ConversationPublic:
        """The conversation, or ConversationNotFound (CHAT_005) when unknown or deleted."""
        row = await self.repo.get(conversation_id, include_deleted=include_deleted)
        return ConversationPublic.from_row(row)

    async def resolve_id_prefix(self, prefix: str) -> str:
        """The full id of the one conversation whose id starts with `prefix` (≥ 4 chars)."""
        return await self.repo.resolve_id_prefix(prefix)

    async def list(
        self,
        *,
        notebook_id: str | None = None,
        owner_id: str | None = None,
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

        Without `status`, active and archived conversations are listed (never deleted ones);
        with `owner_id`, only that user's.
        """
        _check_limit(limit)
        if offset < 0:
            raise InvalidChatRequest("offset cannot be negative.")
        if cursor and offset:
            raise InvalidChatRequest("Use either cursor or offset, not both.")
        if status is not None and status not in CONVERSATION_STATUSES:
            raise InvalidChatRequest(
                f"Unknown conversation status {status!r}.",
                hint=f"Use one of: {', '.join(CONVERSATION_STATUSES)}.",
            )
        rows, total, more = await self.repo.list(
            notebook_id=notebook_id,
            owner_id=owner_id,
            status=status,
            title_contains=title_search.strip() if title_search else None,
            created_after=as_utc(created_after),
            created_before=as_utc(created_before),
            updated_after=as_utc(updated_after),
            updated_before=as_utc(updated_before),
            after=_decode_cursor(cursor) if cursor else None,
            offset=offset,
            limit=limit,
        )
        items = [ConversationPublic.from_row(r) for r in rows]
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
        row = await self.repo.update(
            conversation_id,
            title=_check_title(title) if title is not None else None,
            metadata=metadata,
            status=status,
        )
        return self._changed("conversation_updated", ConversationPublic.from_row(row))

    async def soft_delete(self, conversation_id: str) -> None:
        """Mark the conversation deleted; it is hidden at once and purged by cleanup()."""
        await self.repo.soft_delete(conversation_id)
        if self.on_change is not None:
            row = await self.repo.get(conversation_id, include_deleted=True)
            self._changed("conversation_deleted", ConversationPublic.from_row(row))

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
        # The first user question names a conversation nobody named.
        names = role == "user" and bool(content.strip())
        row = await self.repo.append_message(
            conversation_id,
            role=role,
            content=content,
            sources=list(sources or []),
            metadata=dict(metadata or {}),
            status=status,
            title=derive_title(content) if names else None,
        )
        return MessagePublic.from_row(row)

    async def start_turn(
        self,
        conversation_id: str | None,
        question: str,
        *,
        history_limit: int,
        answer_metadata: dict[str, Any] | None = None,
        notebook_id: str = "",
    ) -> Turn:
        """Store a question and its answer's (incomplete) placeholder in one transaction.

        Creates the conversation when `conversation_id` is None. The history returned is
        what came before this question. One commit instead of four round trips keeps the
        time to the first answer token low.
        """
        question = question.strip()
        if not question:
            raise InvalidChatRequest("The message is empty.", hint="Type a question.")
        rows = await self.repo.start_turn(
            conversation_id,
            question=question,
            title=derive_title(question),
            history_limit=history_limit,
            answer_metadata=dict(answer_metadata or {}),
            notebook_id=notebook_id or await self.default_notebook(),
        )
        conversation = ConversationPublic.from_row(rows.conversation)
        self._changed(
            "conversation_created" if conversation_id is None else "conversation_updated",
            conversation,
        )
        return Turn(
            conversation=conversation,
            history=[MessagePublic.from_row(m) for m in rows.history],
            user=MessagePublic.from_row(rows.user),
            assistant=MessagePublic.from_row(rows.assistant),
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
        row = await self.repo.update_message(
            message_id, content=content, status=status, sources=sources, metadata=metadata
        )
        return MessagePublic.from_row(row)

    async def get_message(
        self, message_id: str, *, conversation_id: str | None = None
    ) -> MessagePublic:
        """The message, or MessageNotFound (CHAT_008); deleted conversations hide theirs."""
        row = await self.repo.get_message(message_id, conversation_id=conversation_id)
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
        window = await self.repo.list_messages(
            conversation_id,
            limit=limit,
            before_seq=before_seq,
            after_seq=after_seq,
            # Walk away from the cursor so the page is the one adjacent to it.
            newest_first=after_seq is None and (before_seq is not None or order == "desc"),
        )
        items = [MessagePublic.from_row(r) for r in window.rows]
        if order == "desc":
            items.reverse()
        return MessagePage(
            items=items, order=order, has_more_before=window.older, has_more_after=window.newer
        )

    async def history(
        self, conversation_id: str, limit: int, *, before_seq: int | None = None
    ) -> builtins.list[MessagePublic]:
        """The last `limit` complete user/assistant messages, oldest first."""
        if limit <= 0:
            return []
        rows = await self.repo.history(conversation_id, limit, before_seq=before_seq)
        return [MessagePublic.from_row(r) for r in rows]

    # --- maintenance: chat/maintenance.py and chat/statistics.py -------------------------
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
        return await cleanup(
            self.repo,
            conversation_id,
            keep_last=keep_last,
            older_than=older_than,
            drop_incomplete=drop_incomplete,
            purge_deleted_older_than=purge_deleted_older_than,
        )

    async def statistics(self) -> dict[str, Any]:
        """Counts by status and role, response times, tokens generated and errors by code."""
        return await statistics(self.repo)


# --- checks and cursors ------------------------------------------------------------------
def _check_title(title: str) -> str:
    clean = " ".join(title.split())
    if not clean:
        raise InvalidChatRequest("A conversation title cannot be empty.")
    if len(clean) > TITLE_MAX_CHARS:
        raise InvalidChatRequest(f"A conversation title takes at most {TITLE_MAX_CHARS} chars.")
    return clean


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidChatRequest(
            f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}.",
            details={"limit": limit, "max": MAX_PAGE_SIZE},
        )


def _encode_cursor(updated_at: datetime, conversation_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), conversation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, cid = json.loads(raw)
        return as_utc(datetime.fromisoformat(stamp)), str(cid)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidChatRequest(
            "The conversation cursor is not valid.",
            hint="Pass next_cursor exactly as the previous page returned it, or omit it.",
        ) from exc
