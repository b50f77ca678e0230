"""Conversations and messages: what a client sends to change them and what it is shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from studyrag.chat.prompts import TEMPLATE_NAME_MAX_CHARS
from studyrag.db.conversations import TITLE_MAX_CHARS
from studyrag.schemas.base import MAX_AGE_SECONDS, SQLITE_INT_MAX, PublicModel, UTCDateTime

if TYPE_CHECKING:
    from studyrag.db.models import Conversation, Message


class ConversationCreate(BaseModel):
    """POST /api/chat/conversations."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=TITLE_MAX_CHARS)
    metadata: dict[str, Any] | None = None
    # The notebook it belongs to; the default notebook when absent.
    notebook_id: str | None = Field(default=None, min_length=1, max_length=64)
    # The prompt template this conversation's answers use unless a message names another.
    template: str | None = Field(default=None, min_length=1, max_length=TEMPLATE_NAME_MAX_CHARS)


class ConversationUpdate(BaseModel):
    """PUT /api/chat/conversations/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=TITLE_MAX_CHARS)
    metadata: dict[str, Any] | None = None
    status: Literal["active", "archived"] | None = None


class ConversationPublic(PublicModel):
    """A conversation as the API, the WebSocket frames and the CLI show it."""

    id: str
    notebook_id: str | None = None
    title: str
    status: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    message_count: int
    created_at: UTCDateTime
    updated_at: UTCDateTime
    last_message_at: UTCDateTime | None = None
    deleted_at: UTCDateTime | None = None

    @classmethod
    def from_row(cls, row: Conversation) -> ConversationPublic:
        """Copy a row, normalising timestamps to UTC."""
        return cls(
            id=row.id,
            notebook_id=row.notebook_id,
            title=row.title,
            status=row.status,
            metadata=dict(row.meta or {}),
            message_count=row.message_count,
            created_at=row.created_at,
            updated_at=row.updated_at,
            last_message_at=row.last_message_at,
            deleted_at=row.deleted_at,
        )


class ConversationDetail(ConversationPublic):
    """GET /api/chat/conversations/{id}: the conversation and the answer in progress, if any."""

    # GenerationHub's Generation.info(): generation_id, message_id, state, last_seq, ...
    generation: dict[str, Any] | None = None


class MessagePublic(PublicModel):
    """A stored message."""

    id: str
    conversation_id: str
    seq: int
    role: str
    content: str
    sources: list[Any] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: str
    created_at: UTCDateTime

    @classmethod
    def from_row(cls, row: Message) -> MessagePublic:
        """Copy a row, normalising the timestamp to UTC."""
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            seq=row.seq,
            role=row.role,
            content=row.content,
            sources=list(row.sources or []),
            metadata=dict(row.meta or {}),
            status=row.status,
            created_at=row.created_at,
        )


class ConversationPage(PublicModel):
    """One page of conversations, newest activity first; follow next_cursor for the next."""

    items: list[ConversationPublic]
    total: int
    limit: int
    offset: int = 0
    next_cursor: str | None = None


class MessagePage(PublicModel):
    """One page of messages; pass first_seq as before_seq (older) or last_seq as after_seq."""

    items: list[MessagePublic]
    order: Literal["asc", "desc"]
    has_more_before: bool
    has_more_after: bool

    @computed_field  # type: ignore[prop-decorator]
    @property
    def first_seq(self) -> int | None:
        return min((m.seq for m in self.items), default=None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def last_seq(self) -> int | None:
        return max((m.seq for m in self.items), default=None)


class CleanupRequest(BaseModel):
    """POST /api/chat/conversations/{id}/cleanup: the rules are combined (their union)."""

    model_config = ConfigDict(extra="forbid")

    # Strict: `true` is no count and "yes" no flag (JSON numbers and booleans only).
    keep_last: int | None = Field(default=None, ge=0, le=SQLITE_INT_MAX, strict=True)
    drop_incomplete: bool = Field(default=False, strict=True)
    older_than_seconds: float | None = Field(
        default=None, ge=0, le=MAX_AGE_SECONDS, strict=True, allow_inf_nan=False
    )
    # Remove a soft-deleted conversation and its messages for good.
    purge: bool = Field(default=False, strict=True)


class CleanupReport(PublicModel):
    """What a cleanup removed; over HTTP, with the conversation as it is now (None if purged)."""

    messages_removed: int = 0
    conversations_purged: int = 0
    messages_purged: int = 0
    conversations_touched: int = 0
    conversation: ConversationPublic | None = None


class ConversationDeleted(PublicModel):
    """DELETE /api/chat/conversations/{id}."""

    deleted: str
