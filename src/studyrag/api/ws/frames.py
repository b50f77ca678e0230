"""WebSocket frames (docs/protocol.md): close codes, encoding, client frame decoding and checks."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from studyrag.errors import (
    InvalidChatRequest,
    InvalidFrame,
    PayloadTooLarge,
    RateLimited,
    StudyRAGError,
)

# Close codes.
CLOSE_GOING_AWAY = 1001  # server shutdown
CLOSE_INTERNAL = 1011  # the broker could not be reached
CLOSE_TRY_AGAIN = 1013  # too many connections for the conversation or the address
CLOSE_NOT_FOUND = 4404  # unknown or deleted conversation
CLOSE_OVERFLOW = 4408  # send queue overflow, or a client that stopped reading

CLIENT_TYPES = ("message", "ping", "pong", "typing", "stop", "resume")

# Client frames are flat objects; 32 levels leave room and keep json.loads far from the
# interpreter's recursion limit (980 levels raised RecursionError and dropped the socket).
MAX_DEPTH = 32
# The transport (uvicorn's ws_max_size) accepts frames up to this many times the frame limit,
# so that a frame over the limit reaches `check_size` and gets an error frame instead of the
# transport's close 1009. Only a frame over the transport limit still closes the socket.
TRANSPORT_FACTOR = 64
# uvicorn's ws_max_queue: frames received but not yet read, per connection (memory bound).
TRANSPORT_QUEUE = 4
# A JSON string (escapes included, unterminated at the end) or one bracket.
_STRUCTURE = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]')

FrameT = TypeVar("FrameT", bound=BaseModel)


def dumps(frame: dict[str, Any]) -> str:
    """One frame as compact JSON."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str)


def error_frame(exc: StudyRAGError) -> dict[str, Any]:
    """The house error shape as a frame; RATE_001 also carries retry_after at the top."""
    frame = {"type": "error", **exc.to_dict(None)}
    if isinstance(exc, RateLimited):
        frame["retry_after"] = round(exc.retry_after, 1)
    return frame


def generation_frames(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The WebSocket frames for one buffered engine event (see docs/protocol.md)."""
    data, type_, mid = message["data"], message["type"], message.get("message_id")
    if type_ == "start":
        return [
            {"type": "user_message", "message": data["user_message"]},
            {
                "type": "stream_start",
                "message_id": data["assistant_message_id"],
                "conversation_id": data["conversation"]["id"],
            },
        ]
    if type_ == "sources":
        return [{"type": "sources", "message_id": mid, "sources": data["sources"]}]
    if type_ == "token":
        return [
            {"type": "stream_chunk", "message_id": mid, "seq": data["seq"], "delta": data["delta"]}
        ]
    if type_ == "done":
        return [
            {
                "type": "stream_end",
                "message_id": mid,
                "message": data["message"],
                "metadata": data["metadata"],
            },
            {"type": "conversation_updated", "conversation": data["conversation"]},
        ]
    if type_ == "error":
        return [{"type": "error", "request_id": None, **data}]
    return []


def transport_max_bytes(frame_limit: int) -> int:
    """uvicorn's ws_max_size for a frame limit: larger frames are refused by the app, not it."""
    return frame_limit * TRANSPORT_FACTOR


def check_size(raw: str | bytes, limit: int) -> None:
    """PayloadTooLarge (CHAT_010) when the frame has more than `limit` bytes."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise PayloadTooLarge(
            f"The frame has {size} bytes; the limit is {limit}.",
            details={"size": size, "limit": limit},
            hint="Send a shorter frame.",
        )


def nesting_depth(text: str, stop: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in JSON `text` (brackets inside strings don't count);
    counting stops once it passes `stop`."""
    depth = deepest = 0
    for match in _STRUCTURE.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def loads(raw: str | bytes) -> Any:
    """JSON of a frame whose nesting is bounded by MAX_DEPTH; InvalidFrame (CHAT_009) otherwise."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise InvalidFrame(
            "The frame is not UTF-8 text.", hint='Send a JSON object such as {"type": "ping"}.'
        ) from None
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise InvalidFrame(
            f"The frame nests arrays or objects more than {MAX_DEPTH} levels deep.",
            details={"max_depth": MAX_DEPTH},
            hint="Client frames are flat JSON objects; see docs/protocol.md.",
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidFrame(
            "The frame is not valid JSON.", hint='Send a JSON object such as {"type": "ping"}.'
        ) from None


def parse(raw: str | bytes) -> dict[str, Any]:
    """A client frame as a dict with a known `type`; InvalidFrame (CHAT_009) otherwise."""
    data = loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise InvalidFrame(
            "A frame is a JSON object with a string `type`.",
            hint=f"Known types: {', '.join(CLIENT_TYPES)}.",
        )
    if data["type"] not in CLIENT_TYPES:
        raise InvalidFrame(
            f"Unknown frame type {data['type'][:40]!r}.",
            details={"type": data["type"][:40], "known": list(CLIENT_TYPES)},
            hint=f"Known types: {', '.join(CLIENT_TYPES)}.",
        )
    return data


def validate(model: type[FrameT], frame: dict[str, Any]) -> FrameT:
    """The frame as `model`; InvalidChatRequest (CHAT_006) naming every bad field."""
    try:
        return model.model_validate(frame)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(x) for x in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        raise InvalidChatRequest(
            f"Invalid {frame['type']} frame: {errors[0]['field']}: {errors[0]['problem']}.",
            details={"errors": errors},
            hint="Fix the listed fields and send the frame again.",
        ) from None
