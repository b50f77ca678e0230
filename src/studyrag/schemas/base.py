"""What every public model shares: UTC timestamps in ISO 8601 and a JSON-ready dict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, overload

from pydantic import AfterValidator, BaseModel, PlainSerializer


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC; naive values (what SQLite returns) are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# `+00:00`, as datetime.isoformat() writes it; pydantic's own JSON form would end in `Z`.
UTCDateTime = Annotated[
    datetime,
    AfterValidator(as_utc),
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
]


# The largest integer SQLite stores (int64): every integer a request may carry is bounded by
# it or less, so none overflows on its way into a query (422, never 500).
SQLITE_INT_MAX = 2**63 - 1
# The longest age a request may name, in seconds: 100 years (a datetime stays representable).
MAX_AGE_SECONDS = 100 * 366 * 86_400


class PublicModel(BaseModel):
    """A record as the API, the WebSocket frames and the CLI's --json show it."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (ISO-8601 UTC timestamps)."""
        return self.model_dump(mode="json")
