"""The OpenAI wire format of /v1: requests, completions, stream chunks, models and errors.

Exactly OpenAI's objects (`chat.completion`, `chat.completion.chunk`, `list` of `model`,
`{"error": {message, type, param, code}}`), plus StudyRAG's extra fields, which OpenAI
clients keep (the official Python client exposes them as attributes): `sources`,
`attribution`, `conversation_id`, `message_id` on a completion and on the last chunk of a
stream. See docs/protocol.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from studyrag.chat.engine import ABSOLUTE_MAX_MESSAGE_CHARS, MAX_ANSWER_TOKENS, MAX_ANSWER_TOP_K
from studyrag.chat.prompts import TEMPLATE_NAME_MAX_CHARS
from studyrag.errors import StudyRAGError
from studyrag.retrieval.types import SearchMode

# A model id names a notebook: `studyrag/<notebook name>` (an id or id prefix works too).
MODEL_PREFIX = "studyrag/"
OWNER = "studyrag"
MAX_MESSAGES = 1000


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts can be read."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = Field(default=None, max_length=ABSOLUTE_MAX_MESSAGE_CHARS)


class ChatMessageIn(BaseModel):
    """A message of the request's conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # The request body's size limit bounds the content.
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Parameters StudyRAG does not use (temperature, top_p,
    stop, seed, tools, user, ...) are accepted and ignored, as OpenAI clients send them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=300)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOKENS)
    # One answer per request: the answer is a stored message of a conversation.
    n: int | None = Field(default=None, ge=1, le=1)
    # StudyRAG's own (the openai client's `extra_body`): continue a stored conversation,
    # and how to answer.
    conversation_id: str | None = Field(default=None, min_length=1, max_length=64)
    top_k: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOP_K)
    search_mode: SearchMode | None = None
    template: str | None = Field(default=None, min_length=1, max_length=TEMPLATE_NAME_MAX_CHARS)

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --- responses -----------------------------------------------------------------------------
def model_id(notebook_name: str) -> str:
    """The /v1 model id of a notebook."""
    return f"{MODEL_PREFIX}{notebook_name}"


def model_object(*, name: str, notebook_id: str, created: int) -> dict[str, Any]:
    """One entry of GET /v1/models."""
    return {
        "id": model_id(name),
        "object": "model",
        "created": created,
        "owned_by": OWNER,
        "notebook_id": notebook_id,
    }


def finish_reason(metadata: dict[str, Any]) -> str:
    """OpenAI's finish_reason of a stored answer: "length" when the token budget ended it."""
    stats = metadata.get("stats") or {}
    return "length" if stats.get("finish_reason") == "length" else "stop"


def usage(metadata: dict[str, Any], streamed_tokens: int) -> dict[str, int]:
    """Token counts of an answer; one written without the model counts its streamed pieces."""
    stats = metadata.get("stats") or {}
    prompt = int(stats.get("prompt_tokens") or 0)
    completion = int(stats.get("completion_tokens") or streamed_tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def extras(message: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    """StudyRAG's fields of a finished answer: sources, attribution and where it is stored."""
    metadata = message.get("metadata") or {}
    return {
        "sources": list(message.get("sources") or []),
        "attribution": metadata.get("attribution"),
        "conversation_id": conversation_id,
        "message_id": message.get("id"),
    }


def completion_id(message_id: str | None) -> str:
    return f"chatcmpl-{message_id or 'unknown'}"


def completion(
    done: dict[str, Any], *, model: str, created: int, streamed_tokens: int
) -> dict[str, Any]:
    """The `chat.completion` object of a finished answer (the `done` event's data)."""
    message = done["message"]
    metadata = message.get("metadata") or {}
    return {
        "id": completion_id(message.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": message.get("content", ""),
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason(metadata),
            }
        ],
        "usage": usage(metadata, streamed_tokens),
        **extras(message, str(done["conversation"]["id"])),
    }


def chunk(
    *,
    id_: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` makes the usage chunk (no choices)."""
    body: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    body.update(extra)
    return body


# --- errors --------------------------------------------------------------------------------
class OpenAIErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorPublic(BaseModel):
    """OpenAI's error body, the one /v1 answers with (openai_error_body)."""

    error: OpenAIErrorObject


def _error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_body(error: StudyRAGError, request_id: str) -> dict[str, Any]:
    """OpenAI's error object; the house error_code is its `code`, the hint ends its message.

    The request id is in the X-Request-ID header, as on every response.
    """
    details = error.details
    param = details.get("param") or details.get("field")
    fields = details.get("errors")
    if param is None and isinstance(fields, list) and fields:
        param = fields[0].get("field") or None
    message = error.message
    if error.hint and error.hint not in message:
        message = f"{message} {error.hint}"
    return {
        "error": {
            "message": message,
            "type": _error_type(error.status_code),
            "param": param,
            "code": error.error_code,
        }
    }
