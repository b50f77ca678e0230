"""Cleanup: trim conversations' messages by rule and purge conversations deleted long ago."""

from __future__ import annotations

from datetime import timedelta

from studyrag.db.conversations import ConversationRepo
from studyrag.db.models import utcnow
from studyrag.errors import InvalidChatRequest
from studyrag.schemas.conversations import CleanupReport


async def cleanup(
    repo: ConversationRepo,
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
    A conversation id limits every rule to that conversation (ConversationNotFound if gone).
    """
    if keep_last is not None and keep_last < 0:
        raise InvalidChatRequest("keep_last cannot be negative.")
    now = utcnow()
    counts = await repo.cleanup(
        conversation_id,
        keep_last=keep_last,
        created_before=now - older_than if older_than is not None else None,
        drop_incomplete=drop_incomplete,
        purge_deleted_before=now - purge_deleted_older_than
        if purge_deleted_older_than is not None
        else None,
    )
    return CleanupReport(
        messages_removed=counts.messages_removed,
        conversations_purged=counts.conversations_purged,
        messages_purged=counts.messages_purged,
        conversations_touched=len(counts.conversations_touched),
    )
