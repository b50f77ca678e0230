"""Stored chat statistics: conversations and messages by status, response times, errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from studyrag.db.conversations import CONVERSATION_STATUSES, ConversationRepo


async def statistics(repo: ConversationRepo) -> dict[str, Any]:
    """Counts by status and role, response times, tokens generated and errors by code."""
    counts = await repo.counts()
    by_status = dict(counts.conversations_by_status)
    for name in CONVERSATION_STATUSES:
        by_status.setdefault(name, 0)
    times = counts.response_times
    return {
        "conversations": {"total": sum(by_status.values()), "by_status": by_status},
        "messages": {
            "total": sum(counts.messages_by_role.values()),
            "by_role": counts.messages_by_role,
            "by_status": counts.messages_by_status,
        },
        "response_time": {
            "count": len(times),
            "mean_seconds": sum(times) / len(times) if times else None,
            "p95_seconds": _percentile(times, 95),
        },
        "tokens_generated": counts.tokens_generated,
        "errors_by_code": counts.errors_by_code,
    }


def _percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
