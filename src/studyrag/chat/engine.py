"""The chat engine: question → retrieval → grounded, streamed, cited answer, stored as it goes.

Event order of one answer: start, sources, token*, then done or error. Failures before
`start` (invalid request, unknown conversation or template) are raised; after it they are
stored on the assistant message and reported as an `error` event.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import anyio

from studyrag.backends.llm.base import ChatMessage, ChatModel, GenerationStats, TokenDelta
from studyrag.chat.attribution import attribute
from studyrag.chat.citations import mark_cited, resolve_citations, strip_markers
from studyrag.chat.conversations import ConversationManager
from studyrag.chat.echo import ECHO_STOPS, EchoFilter, strip_echo
from studyrag.chat.loops import Loop, RepetitionGuard, copies_previous
from studyrag.chat.model_slot import ChatModelSlot
from studyrag.chat.prompts import (
    RAG_BASIC,
    PromptFit,
    PromptTemplate,
    available_templates,
    check_template_name,
    fit_prompt,
    parse_rewrite,
    question_room,
    rewrite_prompt,
)
from studyrag.config import Settings
from studyrag.errors import (
    ContextTooLong,
    GenerationFailed,
    InvalidChatRequest,
    MessageNotFound,
    StudyRAGError,
)
from studyrag.observability.metrics import Metrics
from studyrag.retrieval.context import Context, build_context
from studyrag.retrieval.lexical import STOPWORDS
from studyrag.retrieval.search import MODES, SearchService
from studyrag.retrieval.types import SearchFilters, SearchResult
from studyrag.schemas.conversations import MessagePublic

log = logging.getLogger(__name__)

T = TypeVar("T")

# A hard ceiling for any message, whatever the settings say: request parsing stops there.
ABSOLUTE_MAX_MESSAGE_CHARS = 1_000_000
# The most passages one answer retrieves, and the longest answer a request may ask for.
MAX_ANSWER_TOP_K = 50
MAX_ANSWER_TOKENS = 32_768
REWRITE_MAX_TOKENS = 48
# What an earlier answer becomes in a prompt asked again because the model copied it.
OMITTED_ANSWER = "(answered)"
SUGGESTED_TITLES = 3
SUGGESTED_TERMS = 5
# Enough chunk text to find a corpus's frequent terms without reading all of it.
_TERM_SAMPLE_CHUNKS = 200
# While an answer streams, the text sent so far is written to its message at most this often
# and every this many tokens, whichever comes later: a killed server keeps what clients saw.
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_TOKENS = 8
_TERM = re.compile(r"[^\W\d_]{4,}")


def answer_tokens(max_tokens: int | None, settings: Settings, model: ChatModel) -> int:
    """The answer's token cap: the request's or the settings', at most half the window."""
    budget = max_tokens if max_tokens is not None else settings.llm.max_tokens
    if budget < 1:
        raise InvalidChatRequest("max_tokens must be at least 1.")
    # Half the window for the answer at most, or no source could ever fit.
    return min(budget, max(16, model.context_window // 2))


def check_message(
    text: str,
    settings: Settings,
    *,
    model: ChatModel | None = None,
    template: PromptTemplate | None = None,
    max_tokens: int | None = None,
) -> str:
    """The question without surrounding blanks; CHAT_006 (422) when empty or over the
    character limit, CHAT_003 (413) when `model` is given and the question leaves no room in
    its context window for the answer and one source (counted with the model's tokenizer)."""
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
    if model is not None:
        tpl = template or available_templates(settings.chat.templates).get(
            settings.chat.template, RAG_BASIC
        )
        budget = answer_tokens(max_tokens, settings, model)
        room = question_room(
            tpl,
            count_tokens=model.count_tokens,
            context_window=model.context_window,
            max_tokens=budget,
        )
        # Short questions need no tokenizer: a token covers at least one byte of UTF-8.
        tokens = model.count_tokens(question) if len(question.encode()) > room else 0
        if tokens > room:
            keep = max(0, int(len(question) * room / tokens))
            raise ContextTooLong(
                f"The message takes {tokens} tokens; with the answer ({budget} tokens) and "
                f"its sources, the model's {model.context_window}-token context leaves room "
                f"for {max(room, 0)}.",
                details={
                    "field": "message",
                    "tokens": tokens,
                    "limit": max(room, 0),
                    "length": len(question),
                    "suggested_chars": keep,
                    "context_window": model.context_window,
                    "max_tokens": budget,
                },
                hint=f"Shorten the message to about {keep} characters, ask for a shorter "
                "answer (max_tokens), or use a model with a larger context "
                "(STUDYRAG_LLM__N_CTX).",
            )
    return question


# --- events ------------------------------------------------------------------------------
@dataclass(slots=True)
class StartEvent:
    """The question is stored; the answer will be `assistant_message_id`."""

    conversation: dict[str, Any]
    user_message: dict[str, Any]
    assistant_message_id: str
    type: Literal["start"] = "start"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready event."""
        return {
            "type": self.type,
            "conversation": self.conversation,
            "user_message": self.user_message,
            "assistant_message_id": self.assistant_message_id,
        }


@dataclass(slots=True)
class SourcesEvent:
    """The numbered passages the answer may cite (empty when nothing was relevant)."""

    sources: list[dict[str, Any]]
    type: Literal["sources"] = "sources"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready event."""
        return {"type": self.type, "sources": self.sources}


@dataclass(slots=True)
class TokenEvent:
    """A piece of the answer; `seq` counts 1, 2, 3… within one answer."""

    seq: int
    delta: str
    type: Literal["token"] = "token"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready event."""
        return {"type": self.type, "seq": self.seq, "delta": self.delta}


@dataclass(slots=True)
class DoneEvent:
    """The stored answer; its content replaces the streamed text (bad citations removed)."""

    message: dict[str, Any]
    conversation: dict[str, Any]
    metadata: dict[str, Any]
    type: Literal["done"] = "done"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready event."""
        return {
            "type": self.type,
            "message": self.message,
            "conversation": self.conversation,
            "metadata": self.metadata,
        }


@dataclass(slots=True)
class ErrorEvent:
    """The answer failed; the assistant message is stored with status "error", or
    "incomplete" with the text streamed so far when tokens had been sent (`_Answer.fail`)."""

    error_code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    exception: StudyRAGError | None = field(default=None, repr=False, compare=False)
    type: Literal["error"] = "error"

    def to_dict(self) -> dict[str, Any]:
        """The house error shape plus the event type and the failed message's id."""
        return {
            "type": self.type,
            "error_code": self.error_code,
            "message": self.message,
            "details": self.details,
            "message_id": self.message_id,
        }


ChatEvent = StartEvent | SourcesEvent | TokenEvent | DoneEvent | ErrorEvent


@dataclass(slots=True)
class ChatResult:
    """A whole answer, as process_message returns it."""

    message: dict[str, Any]
    conversation: dict[str, Any]
    sources: list[dict[str, Any]]
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "message": self.message,
            "conversation": self.conversation,
            "sources": self.sources,
            "metadata": self.metadata,
        }


# --- one answer's state ------------------------------------------------------------------
@dataclass(slots=True)
class _Answer:
    """What one answer has gathered so far; written to its message whatever happens."""

    message: MessagePublic
    template: str
    mode: str
    model: ChatModel
    started: float = field(default_factory=time.perf_counter)
    parts: list[str] = field(default_factory=list)
    sources: list[Any] = field(default_factory=list)
    stats: GenerationStats | None = None
    first_token: float | None = None
    shown: int = 0  # token events sent (seq of the last one)
    prompt_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    generated: bool = False  # the text came from the model (else it is our own message)
    status: str = "incomplete"
    error: StudyRAGError | None = None
    question: str = ""
    streamed: list[str] = field(default_factory=list)  # the token deltas handed to clients
    checkpoint: asyncio.Task[Any] | None = None  # the partial-text write in flight, if any
    checkpoint_at: float = field(default_factory=time.perf_counter)
    checkpoint_tokens: int = 0

    def fail(self, error: StudyRAGError) -> None:
        """The answer ended on `error`. Once tokens have reached clients (the model's server
        cut the stream, stalled, or stopped with an error mid-answer) it is stored as
        `incomplete` with that text, as a stopped or killed answer is; before any token,
        as `error`. Either way metadata.error_code says why."""
        self.error = error
        self.status = "incomplete" if self.streamed else "error"


@dataclass(slots=True)
class _Retrieved:
    """What retrieval found for one answer, and how (merged into the answer's metadata)."""

    relevant: list[SearchResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class ChatEngine:
    """Answers questions from the indexed documents and keeps the conversation."""

    def __init__(
        self,
        *,
        conversations: ConversationManager,
        search: SearchService,
        model: ChatModel,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.conversations = conversations
        self.metrics = metrics or Metrics()
        self.search = search
        # Each answer leases the model it starts with: a switch never cuts one short.
        self.slot = ChatModelSlot(model)
        self.settings = settings
        self.templates: dict[str, PromptTemplate] = available_templates(settings.chat.templates)
        # Final writes run shielded from cancellation; they are kept here until done.
        self._writes: set[asyncio.Task[Any]] = set()

    @property
    def model(self) -> ChatModel:
        """The model a new answer gets."""
        return self.slot.current

    def reload_templates(self) -> None:
        """Rebuild the templates from the live settings (after a configuration change)."""
        self.templates = available_templates(self.settings.chat.templates)

    async def process_message(
        self,
        message: str,
        *,
        conversation_id: str | None = None,
        template: str | None = None,
        top_k: int | None = None,
        search_mode: str | None = None,
        filters: SearchFilters | None = None,
        max_tokens: int | None = None,
        notebook_id: str | None = None,
    ) -> ChatResult:
        """Answer `message` in one go; a failed answer raises its StudyRAGError."""
        done: DoneEvent | None = None
        events = self.stream_message(
            message,
            conversation_id=conversation_id,
            template=template,
            top_k=top_k,
            search_mode=search_mode,
            filters=filters,
            max_tokens=max_tokens,
            notebook_id=notebook_id,
        )
        async with aclosing(events):
            async for event in events:
                if isinstance(event, ErrorEvent):
                    raise event.exception or GenerationFailed(event.message)
                if isinstance(event, DoneEvent):
                    done = event
        assert done is not None, "a stream ends with done or error"
        return ChatResult(
            message=done.message,
            conversation=done.conversation,
            sources=list(done.message.get("sources", [])),
            metadata=done.metadata,
        )

    async def stream_message(
        self,
        message: str,
        *,
        conversation_id: str | None = None,
        template: str | None = None,
        top_k: int | None = None,
        search_mode: str | None = None,
        filters: SearchFilters | None = None,
        max_tokens: int | None = None,
        notebook_id: str | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """Answer `message` as events; closing the iterator stops and keeps a partial answer.

        Retrieval is scoped to the conversation's notebook (a new conversation is made in
        `notebook_id`, or the default notebook), and within it to `filters`. The whole
        answer runs on the model that is current when it starts.
        """
        async with self.slot.lease() as model:
            events = self._stream(
                model,
                message,
                conversation_id=conversation_id,
                template=template,
                top_k=top_k,
                search_mode=search_mode,
                filters=filters,
                max_tokens=max_tokens,
                notebook_id=notebook_id,
            )
            async with aclosing(events):
                async for event in events:
                    yield event

    async def _stream(
        self,
        model: ChatModel,
        message: str,
        *,
        conversation_id: str | None,
        template: str | None,
        top_k: int | None,
        search_mode: str | None,
        filters: SearchFilters | None,
        max_tokens: int | None,
        notebook_id: str | None,
    ) -> AsyncGenerator[ChatEvent, None]:
        chat = self.settings.chat
        tpl = self.template(template or chat.template)
        question = check_message(
            message or "", self.settings, model=model, template=tpl, max_tokens=max_tokens
        )
        mode = search_mode or self.settings.search.mode
        if mode not in MODES:
            raise InvalidChatRequest(
                f"Unknown search mode {mode!r}.", hint=f"Use one of: {', '.join(MODES)}."
            )
        k = top_k if top_k is not None else chat.top_k
        if not 1 <= k <= MAX_ANSWER_TOP_K:
            raise InvalidChatRequest(f"top_k must be between 1 and {MAX_ANSWER_TOP_K}.")
        budget = answer_tokens(max_tokens, self.settings, model)

        scope = await self.conversations.scope(conversation_id, notebook_id)
        filters = (
            replace(filters, notebook_id=scope) if filters else SearchFilters(notebook_id=scope)
        )
        answer_meta = {"template": tpl.name}
        retrieval: asyncio.Task[_Retrieved] | None = None
        if conversation_id is None or not chat.rewrite_followups:
            # The search query is the question itself, so search while the question is
            # stored: the two overlap instead of adding up before the first token.
            retrieval = asyncio.ensure_future(self._retrieve(model, question, [], mode, k, filters))
        try:
            turn = await self.conversations.start_turn(
                conversation_id,
                question,
                history_limit=chat.history_messages,
                answer_metadata=answer_meta,
                notebook_id=scope,
            )
        except BaseException:
            if retrieval is not None:
                await _discard(retrieval)
            raise
        answer = _Answer(
            message=turn.assistant, template=tpl.name, mode=mode, model=model, question=question
        )
        try:
            # Inside the try: from here on, any exit leaves the placeholder finalised.
            yield StartEvent(
                conversation=turn.conversation.to_dict(),
                user_message=turn.user.to_dict(),
                assistant_message_id=turn.assistant.id,
            )
            history = [
                ChatMessage(
                    "user" if m.role == "user" else "assistant",
                    m.content if m.role == "user" else strip_markers(m.content),
                )
                for m in turn.history
            ]
            if retrieval is None:
                # A follow-up is rewritten from the history first, so it waits for it.
                retrieval = asyncio.ensure_future(
                    self._retrieve(model, question, history, mode, k, filters)
                )
            # aclosing: a consumer that stops closes every inner stream down to the model's.
            steps = self._answer(answer, question, history, tpl, retrieval, filters, budget)
            async with aclosing(steps):
                async for event in steps:
                    yield event
            answer.status = "complete"
        except (GeneratorExit, asyncio.CancelledError):
            answer.status = "incomplete"
            raise
        except StudyRAGError as exc:
            answer.fail(exc)
        except Exception as exc:
            log.exception("Answer %s failed", turn.assistant.id)
            answer.fail(
                StudyRAGError(
                    f"The answer failed unexpectedly: {type(exc).__name__}.",
                    hint="See the server log; send the message again.",
                )
            )
        finally:
            try:
                if retrieval is not None:
                    await _discard(retrieval)
            finally:
                stored, conv = await self._shielded(self._save(answer))
        if answer.error is not None:
            err = answer.error.to_dict()
            yield ErrorEvent(
                error_code=err["error_code"],
                message=err["message"],
                details=err["details"],
                message_id=stored.id,
                exception=answer.error,
            )
        else:
            yield DoneEvent(
                message=stored.to_dict(), conversation=conv, metadata=dict(stored.metadata)
            )

    async def drain(self) -> None:
        """Wait for final message writes still running after a cancellation."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    # --- steps ---------------------------------------------------------------------------
    def template(self, name: object) -> PromptTemplate:
        """The prompt template called `name`; InvalidChatRequest (CHAT_006) if unknown."""
        return self.templates[check_template_name(name, self.templates)]

    async def _retrieve(
        self,
        model: ChatModel,
        question: str,
        history: list[ChatMessage],
        mode: str,
        top_k: int,
        filters: SearchFilters | None,
    ) -> _Retrieved:
        """The relevant passages for a question, rewritten from the history if a follow-up."""
        found = _Retrieved()
        query = question
        if history and self.settings.chat.rewrite_followups:
            query = await self._rewrite(model, history, question)
            found.meta["rewritten_query"] = query if query != question else None
        t0 = time.perf_counter()
        response = await self.search.search(query, mode=mode, top_k=top_k, filters=filters)
        relevant = [r for r in response.results if self._relevant(r, mode)]
        if not relevant and query != question:
            # A small model's rewrite can miss; the user's own words get a second chance.
            response = await self.search.search(question, mode=mode, top_k=top_k, filters=filters)
            relevant = [r for r in response.results if self._relevant(r, mode)]
            found.meta["rewrite_fallback"] = True
        found.meta["retrieval_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        found.meta["candidates"] = len(response.results)
        found.meta["best_score"] = max((r.score for r in response.results), default=None)
        found.relevant = relevant
        return found

    async def _answer(
        self,
        answer: _Answer,
        question: str,
        history: list[ChatMessage],
        tpl: PromptTemplate,
        retrieval: asyncio.Task[_Retrieved],
        filters: SearchFilters | None,
        max_tokens: int,
    ) -> AsyncGenerator[ChatEvent, None]:
        meta = answer.meta
        meta.update(
            template=tpl.name,
            search_mode=answer.mode,
            model=answer.model.model_name,
            provider=answer.model.provider,
            rewritten_query=None,
        )
        found = await retrieval
        meta.update(found.meta)
        relevant = found.relevant

        if not relevant:
            text = await self._nothing_found(filters, meta)
            yield SourcesEvent([])
            for seq, piece in enumerate(_words(text), start=1):
                answer.parts.append(piece)
                yield TokenEvent(seq, piece)
            return

        tokens = self._generate(answer, question, history, tpl, relevant, max_tokens)
        async with aclosing(tokens):
            async for event in tokens:
                yield event

    async def _generate(
        self,
        answer: _Answer,
        question: str,
        history: list[ChatMessage],
        tpl: PromptTemplate,
        relevant: list[SearchResult],
        max_tokens: int,
    ) -> AsyncGenerator[ChatEvent, None]:
        model = answer.model

        def assemble() -> tuple[Context, PromptFit]:
            context = build_context(
                relevant,
                budget=self.settings.search.context_token_budget,
                count_tokens=model.count_tokens,
            )
            fit = fit_prompt(
                tpl,
                question=question,
                context_text=context.text,
                history=history,
                count_tokens=model.count_tokens,
                context_window=model.context_window,
                max_tokens=max_tokens,
                sources=context.sources,
                answer_tokens=self.settings.chat.history_answer_tokens,
            )
            return context, fit

        # Tokenizing every source and trimming by binary search is CPU work: off the loop,
        # so other conversations' streams don't stall meanwhile.
        context, fit = await anyio.to_thread.run_sync(assemble)
        answer.sources = fit.sources
        answer.prompt_tokens = fit.prompt_tokens
        answer.meta.update(
            history_used=fit.history_used,
            history_dropped=fit.history_dropped,
            sources_dropped=fit.sources_dropped,
            context_tokens=context.tokens,
        )
        yield SourcesEvent([s.to_dict() for s in fit.sources])
        answer.generated = True
        previous = [m.content for m in history if m.role == "assistant"]
        messages = fit.messages
        for attempt in (1, 2):
            tokens = self._tokens(answer, messages, max_tokens, previous)
            async with aclosing(tokens):
                async for event in tokens:
                    yield event
            loop = answer.meta.get("loop")
            if attempt == 2 or not previous or not _copied(answer, previous):
                break
            # The model copies an earlier answer: ask again with the earlier answers blanked
            # (the questions stay, so a follow-up still reads as one, and the turns still
            # alternate, which some chat templates insist on). The client's streamed text is
            # replaced by the final content of `done`.
            log.info("Answer %s repeats an earlier answer; asking without them", answer.message.id)
            answer.meta["history_copy"] = {"retried": True, "loop": loop}
            answer.meta.pop("loop", None)
            answer.parts.clear()
            answer.stats = None
            messages = [
                ChatMessage("assistant", OMITTED_ANSWER) if m.role == "assistant" else m
                for m in fit.messages
            ]
            previous = []
        self._clean(answer)
        if answer.stats is not None and answer.stats.finish_reason == "error":
            raise GenerationFailed("The model stopped with an error.")

    async def _tokens(
        self,
        answer: _Answer,
        messages: list[ChatMessage],
        max_tokens: int,
        previous: list[str],
    ) -> AsyncGenerator[ChatEvent, None]:
        """Stream one generation into `answer`; stop the model where it starts to loop."""
        guard = RepetitionGuard(previous=previous) if self.settings.chat.stop_loops else None
        echo = EchoFilter()
        stream = answer.model.stream(
            messages,
            max_tokens=max_tokens,
            temperature=self.settings.llm.temperature,
            stop=ECHO_STOPS,
        )
        loop: Loop | None = None
        # When our consumer stops, closing the model's stream stops the generation too.
        async with _closing(stream):
            async for event in stream:
                if isinstance(event, TokenDelta):
                    if not event.text:
                        continue
                    if answer.first_token is None:
                        answer.first_token = time.perf_counter() - answer.started
                    answer.parts.append(event.text)
                    if guard is not None and (loop := guard.feed(event.text)) is not None:
                        break  # the piece that closed the loop is not shown
                    shown = echo.feed(event.text)
                    if shown:
                        answer.shown += 1
                        yield TokenEvent(answer.shown, shown)
                        answer.streamed.append(shown)
                        self._checkpoint(answer)
                else:
                    answer.stats = event.stats
        if loop is not None:
            # The stream was closed before its end: the stats are what we measured.
            answer.stats = self._partial_stats(answer)
            answer.stats.finish_reason = "repetition"
            answer.meta["loop"] = {
                "kind": loop.kind,
                "start": loop.start,
                "unit": loop.unit[:200],
                "generated_chars": len("".join(answer.parts)),
            }
            answer.parts[:] = [guard.text[: loop.start].rstrip()] if guard is not None else []
        rest = echo.flush()
        if rest and loop is None:
            answer.shown += 1
            yield TokenEvent(answer.shown, rest)

    def _checkpoint(self, answer: _Answer) -> None:
        """Store the text streamed so far in the background, at bounded intervals.

        Called after each token was taken by the consumer; the write never delays a token
        (nothing is written before CHECKPOINT_SECONDS, so the first token is not delayed
        either). The message stays `incomplete` until the final save, which waits for this.
        """
        now = time.perf_counter()
        if (
            now - answer.checkpoint_at < CHECKPOINT_SECONDS
            or answer.shown - answer.checkpoint_tokens < CHECKPOINT_TOKENS
            or (answer.checkpoint is not None and not answer.checkpoint.done())
        ):
            return
        answer.checkpoint_at, answer.checkpoint_tokens = now, answer.shown
        answer.checkpoint = asyncio.ensure_future(
            self._write_partial(answer, "".join(answer.streamed))
        )

    async def _write_partial(self, answer: _Answer, text: str) -> None:
        try:
            await self.conversations.update_message(answer.message.id, content=text)
        except Exception as exc:  # a failed checkpoint costs durability only, not the answer
            log.warning("Checkpoint of answer %s failed: %r", answer.message.id, exc)

    def _clean(self, answer: _Answer) -> None:
        """The generated text without prompt echo (headers, role tags, a repeated question)."""
        raw = "".join(answer.parts)
        labels = [s.label() for s in answer.sources]
        clean, removed = strip_echo(raw, labels)
        if removed:
            answer.meta["echo_removed"] = removed
            answer.parts[:] = [clean]

    def _relevant(self, result: SearchResult, mode: str) -> bool:
        """Cosine similarity decides where there is one; a lexical match needs a fused score."""
        chat = self.settings.chat
        semantic = result.scores.get("semantic")
        if semantic is not None and semantic >= chat.min_similarity:
            return True
        if "lexical" not in result.scores:
            return False
        if mode == "lexical":
            return True  # BM25 has no fixed scale: a match is the only signal there is
        return result.score >= chat.relevance_threshold

    async def _rewrite(self, model: ChatModel, history: list[ChatMessage], question: str) -> str:
        """A standalone query for a follow-up; the raw question when the model fails."""
        try:
            done = await model.complete(
                rewrite_prompt(history, question),
                max_tokens=REWRITE_MAX_TOKENS,
                temperature=0.0,
            )
        except Exception as exc:  # noqa: BLE001 - a failed rewrite must not fail the answer
            log.warning("Follow-up rewrite failed, searching the raw question: %s", exc)
            return question
        # Markers the model copied from the history are noise in a search query.
        return parse_rewrite(strip_markers(done.text), question)

    async def _nothing_found(self, filters: SearchFilters | None, meta: dict[str, Any]) -> str:
        """Our own reply when no passage is relevant: say so and suggest what to ask."""
        titles, terms = await self._suggestions(filters)
        meta.update(no_results=True, cited=[], suggestions={"documents": titles, "terms": terms})
        if not titles:
            return (
                "There are no indexed documents to answer from yet. Add your study "
                "documents first, then ask again."
            )
        text = (
            "I could not find anything relevant to this question in your documents, so I "
            "will not guess. Try asking about " + ", ".join(f'"{t}"' for t in titles) + "."
        )
        if terms:
            text += " Topics your documents cover include: " + ", ".join(terms) + "."
        return text

    async def _suggestions(self, filters: SearchFilters | None) -> tuple[list[str], list[str]]:
        """A few document titles and frequent terms of the indexed chunks."""
        docs, texts = await self.search.repo.samples(
            filters, titles=SUGGESTED_TITLES, chunks=_TERM_SAMPLE_CHUNKS
        )
        titles = [str((meta or {}).get("title") or name) for name, meta in docs]
        terms = await anyio.to_thread.run_sync(_frequent_terms, texts)
        return titles, terms

    async def _save(self, answer: _Answer) -> tuple[MessagePublic, dict[str, Any]]:
        """Write the answer's final state to its pre-created message."""
        if answer.checkpoint is not None:
            await asyncio.wait([answer.checkpoint])  # never lands after the final write
        raw = "".join(answer.parts)
        meta = dict(answer.meta)
        meta["template"] = answer.template
        sources: list[dict[str, Any]] = []
        content = raw
        if answer.generated:
            content, cited, removed = resolve_citations(raw, answer.sources)
            sources = mark_cited(answer.sources, cited)
            meta.update(cited=cited, removed_citations=removed)
            if answer.stats is not None and answer.status == "complete":
                self._observe(answer.stats)
            # A stopped answer stays exactly what was streamed; a failed one has no claims.
            if self.settings.chat.attribution and answer.status == "complete":
                content, sources = await self._attribute(answer, content, sources, meta)
            stats = answer.stats or self._partial_stats(answer)
            if answer.error is not None:
                stats.finish_reason = "error"
            elif answer.status == "incomplete":
                stats.finish_reason = "cancelled"
            meta["stats"] = stats.to_dict()
        meta["response_ms"] = round((time.perf_counter() - answer.started) * 1000, 2)
        if answer.error is not None:
            meta["error_code"] = answer.error.error_code
            meta["error"] = answer.error.message
        try:
            stored = await self.conversations.update_message(
                answer.message.id,
                content=content,
                status=answer.status,
                sources=sources,
                metadata=meta,
            )
        except MessageNotFound:
            # Removed meanwhile (cleanup with drop_incomplete); report what it would be.
            log.warning("Answer %s was deleted before it was saved", answer.message.id)
            stored = answer.message.model_copy(
                update={
                    "content": content,
                    "status": answer.status,
                    "sources": sources,
                    "metadata": meta,
                }
            )
        conv = await self.conversations.get(answer.message.conversation_id, include_deleted=True)
        return stored, conv.to_dict()

    def _observe(self, stats: GenerationStats) -> None:
        """The model's time to first token and speed, by provider and model."""
        labels = {"provider": stats.provider, "model": stats.model}
        if stats.time_to_first_token is not None:
            self.metrics.time_to_first_token.labels(**labels).observe(stats.time_to_first_token)
        if stats.completion_tokens:
            self.metrics.tokens_per_second.labels(**labels).observe(stats.tokens_per_second)

    async def _attribute(
        self,
        answer: _Answer,
        content: str,
        sources: list[dict[str, Any]],
        meta: dict[str, Any],
    ) -> tuple[str, list[dict[str, Any]]]:
        """Content and sources with checked citations and quotes (chat/attribution.py).

        It runs once the stream has ended, so it never delays a token; a failure keeps the
        answer as resolved so far rather than losing it.
        """
        t0 = time.perf_counter()
        try:
            checked = await attribute(
                content,
                answer.sources,
                embedder=self.search.semantic.embedder,
                question=answer.question,
            )
        except Exception:  # noqa: BLE001 - an unchecked answer beats a lost one
            log.exception("Checking the citations of answer %s failed", answer.message.id)
            return content, sources
        meta.update(cited=checked.cited, attribution=checked.meta)
        meta["attribution_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return checked.content, checked.sources

    def _partial_stats(self, answer: _Answer) -> GenerationStats:
        total = time.perf_counter() - answer.started
        produced = len(answer.parts)
        return GenerationStats(
            model=answer.model.model_name,
            provider=answer.model.provider,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=produced,
            time_to_first_token=answer.first_token,
            total_time=total,
            tokens_per_second=produced / total if total > 0 else 0.0,
        )

    async def _shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to the end even if the caller is cancelled meanwhile."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Saving an answer failed", exc_info=task.exception())


@asynccontextmanager
async def _closing(stream: AsyncIterator[Any]) -> AsyncIterator[None]:
    """Close an async iterator on exit if it can be closed (every async generator can)."""
    try:
        yield
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _discard(task: asyncio.Task[Any]) -> None:
    """Stop a task whose result nobody wants any more; wait for it, swallow its outcome."""
    task.cancel()  # no-op when it is done
    await asyncio.wait([task])  # raises only if our own task is cancelled meanwhile
    if not task.cancelled() and task.exception() is not None:
        # Retrieved here, or asyncio would log "Task exception was never retrieved".
        log.debug("Discarded task ended with %r", task.exception())


def _copied(answer: _Answer, previous: list[str]) -> bool:
    """Whether the answer is an earlier answer again (its start, or nearly all of it)."""
    loop = answer.meta.get("loop")
    if loop is not None and loop.get("kind") == "history" and not "".join(answer.parts).strip():
        return True
    return copies_previous("".join(answer.parts), previous)


def _words(text: str) -> list[str]:
    """Text as word pieces with their leading space, like a detokenizer streams them."""
    words = text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


def _frequent_terms(texts: list[str]) -> list[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w in _TERM.findall(text.lower()) if w not in STOPWORDS)
    return [w for w, _ in counts.most_common(SUGGESTED_TERMS)]
