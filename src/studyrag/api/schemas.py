"""Request and response models of the chat API (HTTP bodies and WebSocket client frames)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from studyrag.config import Settings
from studyrag.errors import InvalidChatRequest
from studyrag.retrieval.types import SearchFilters
from studyrag.schemas.conversations import ConversationPublic, MessagePublic

SearchModeName = Literal["hybrid", "semantic", "lexical"]
# A hard ceiling for any body, whatever the settings say: pydantic never sees more.
ABSOLUTE_MAX_MESSAGE_CHARS = 1_000_000


class ChatFilters(BaseModel):
    """Restrict retrieval to some documents or file types."""

    model_config = ConfigDict(extra="forbid")

    document_ids: list[str] | None = Field(default=None, max_length=200)
    file_types: list[str] | None = Field(default=None, max_length=20)

    def to_search(self) -> SearchFilters:
        """The retrieval layer's filter object."""
        return SearchFilters(document_ids=self.document_ids, file_types=self.file_types)


class ChatOptions(BaseModel):
    """How one answer is produced; shared by POST /message, SSE and the WebSocket."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(default=None, min_length=1, max_length=100)
    top_k: int | None = Field(default=None, ge=1, le=50)
    search_mode: SearchModeName | None = None
    filters: ChatFilters | None = None
    # At most the server's STUDYRAG_LLM__MAX_TOKENS; a lower value asks for a shorter answer.
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)

    def engine_kwargs(self, settings: Settings) -> dict[str, Any]:
        """Keyword arguments for ChatEngine.stream_message."""
        cap = settings.llm.max_tokens
        return {
            "template": self.template,
            "top_k": self.top_k,
            "search_mode": self.search_mode,
            "filters": self.filters.to_search() if self.filters else None,
            "max_tokens": min(self.max_tokens, cap) if self.max_tokens else cap,
        }


class ChatRequest(ChatOptions):
    """POST /api/chat/message: a question, in a conversation or starting one."""

    message: str = Field(min_length=1, max_length=ABSOLUTE_MAX_MESSAGE_CHARS)
    conversation_id: str | None = Field(default=None, min_length=1, max_length=64)


class WSMessageFrame(ChatOptions):
    """The client's `message` frame: the question and the same options as ChatRequest."""

    type: Literal["message"]
    content: str = Field(min_length=1, max_length=ABSOLUTE_MAX_MESSAGE_CHARS)
    # Accepted for symmetry with ChatRequest; the socket's path names the conversation.
    conversation_id: str | None = Field(default=None, max_length=64)


class WSTypingFrame(BaseModel):
    type: Literal["typing"]
    is_typing: bool


class WSResumeFrame(BaseModel):
    type: Literal["resume"]
    message_id: str = Field(min_length=1, max_length=64)
    last_seq: int = Field(default=0, ge=0)


def check_message(text: str, settings: Settings) -> str:
    """The question without surrounding blanks; CHAT_006 (422) when empty or over the limit."""
    question = text.strip()
    if not question:
        raise InvalidChatRequest(
            "The message is empty.",
            details={"field": "message"},
            hint="Type a question.",
        )
    limit = settings.chat.max_message_chars
    if len(question) > limit:
        raise InvalidChatRequest(
            f"The message has {len(question)} characters; the limit is {limit}.",
            details={"field": "message", "length": len(question), "limit": limit},
            hint="Shorten it, or raise STUDYRAG_CHAT__MAX_MESSAGE_CHARS.",
        )
    return question


def max_body_bytes(settings: Settings) -> int:
    """The largest chat request body accepted before parsing (else 413 CHAT_010)."""
    # Four UTF-8 bytes per character at worst, JSON escaping aside, plus room for options.
    return max(settings.api.ws_max_frame_bytes, settings.chat.max_message_chars * 6 + 16_384)


class SourceOut(BaseModel):
    """A numbered passage the answer may cite."""

    model_config = ConfigDict(extra="allow")

    index: int
    document_id: str
    filename: str
    page: int | None = None
    section: str | None = None
    chunk_id: int
    score: float
    excerpt: str = ""
    start: int | None = None
    end: int | None = None


class ChatResponse(BaseModel):
    """POST /api/chat/message: the stored answer, its conversation, sources and statistics."""

    message: MessagePublic
    conversation: ConversationPublic
    sources: list[SourceOut]
    metadata: dict[str, Any]
