"""Asking: the chat request (HTTP, SSE, WebSocket frames), its options and the answer shown."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from studyrag.chat.engine import ABSOLUTE_MAX_MESSAGE_CHARS, MAX_ANSWER_TOKENS, MAX_ANSWER_TOP_K
from studyrag.chat.prompts import TEMPLATE_NAME_MAX_CHARS
from studyrag.config import Settings
from studyrag.retrieval.types import SearchMode
from studyrag.schemas.base import SQLITE_INT_MAX, PublicModel
from studyrag.schemas.conversations import ConversationPublic, MessagePublic
from studyrag.schemas.documents import Quote
from studyrag.schemas.search import SearchFiltersIn

ID_MAX_CHARS = 64


class ChatOptions(BaseModel):
    """How one answer is produced; shared by POST /message, SSE and the WebSocket."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(default=None, min_length=1, max_length=TEMPLATE_NAME_MAX_CHARS)
    top_k: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOP_K)
    search_mode: SearchMode | None = None
    filters: SearchFiltersIn | None = None
    # At most the server's STUDYRAG_LLM__MAX_TOKENS; a lower value asks for a shorter answer.
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_ANSWER_TOKENS)
    # A new conversation's notebook (the default one when absent); an existing conversation
    # answers from its own notebook, and naming another is refused (CHAT_006).
    notebook_id: str | None = Field(default=None, min_length=1, max_length=64)

    def engine_kwargs(self, settings: Settings) -> dict[str, Any]:
        """Keyword arguments for ChatEngine.stream_message."""
        cap = settings.llm.max_tokens
        return {
            "template": self.template,
            "top_k": self.top_k,
            "search_mode": self.search_mode,
            "filters": self.filters.to_search() if self.filters else None,
            "max_tokens": min(self.max_tokens, cap) if self.max_tokens else cap,
            "notebook_id": self.notebook_id,
        }


class StreamRequest(ChatOptions):
    """POST /api/chat/stream/{conversation_id}: a question whose answer streams as SSE."""

    message: str = Field(max_length=ABSOLUTE_MAX_MESSAGE_CHARS)


class ChatRequest(ChatOptions):
    """POST /api/chat/message: a question, in a conversation or starting one."""

    message: str = Field(min_length=1, max_length=ABSOLUTE_MAX_MESSAGE_CHARS)
    conversation_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX_CHARS)


class SourcePublic(PublicModel):
    """A numbered passage the answer may cite."""

    # Sources also carry what citation resolution adds (e.g. `cited`); it is passed through.
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
    # The span of the document (documents.content offsets, as GET /api/chunks/{id}?start=&end=
    # takes them) that supports the sentences citing this source, and how well (0..1);
    # null when the answer does not cite it (chat/attribution.py).
    quote: Quote | None = None
    support: float | None = Field(default=None, ge=0.0, le=1.0)


class ChatResponse(PublicModel):
    """POST /api/chat/message: the stored answer, its conversation, sources and statistics."""

    message: MessagePublic
    conversation: ConversationPublic
    sources: list[SourcePublic]
    metadata: dict[str, Any]


class StopResult(PublicModel):
    """POST /api/chat/conversations/{id}/stop: whether an answer was stopped, and its message."""

    stopped: bool
    # The stored, incomplete message; only what was streamed if it was deleted meanwhile.
    message: dict[str, Any] | None = None


# --- WebSocket client frames (docs/protocol.md) --------------------------------------------
class WSMessageFrame(ChatOptions):
    """The client's `message` frame: the question and the same options as ChatRequest."""

    type: Literal["message"]
    content: str = Field(min_length=1, max_length=ABSOLUTE_MAX_MESSAGE_CHARS)
    # Accepted for symmetry with ChatRequest; the socket's path names the conversation.
    conversation_id: str | None = Field(default=None, max_length=ID_MAX_CHARS)


class WSTypingFrame(BaseModel):
    """The client's `typing` frame, relayed to the conversation's other clients."""

    type: Literal["typing"]
    is_typing: bool = Field(strict=True)  # "yes" and 1 are refused


class WSResumeFrame(BaseModel):
    """The client's `resume` frame: replay an answer after the last token it holds."""

    type: Literal["resume"]
    message_id: str = Field(min_length=1, max_length=ID_MAX_CHARS)
    last_seq: int = Field(default=0, ge=0, le=SQLITE_INT_MAX)
