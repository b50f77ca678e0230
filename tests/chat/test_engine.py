"""ChatEngine through the real services: SQLite, FTS5, Chroma; fake embedder and chat model."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from studyrag.backends.embeddings.fake import FakeEmbedder
from studyrag.backends.llm.fake import FakeChatModel
from studyrag.chat.engine import (
    ChatEvent,
    DoneEvent,
    ErrorEvent,
    SourcesEvent,
    StartEvent,
    TokenEvent,
)
from studyrag.config import ChatSettings, Settings
from studyrag.errors import (
    ConversationNotFound,
    GenerationFailed,
    InvalidChatRequest,
    LLMUnavailable,
)
from studyrag.services import Services, open_services

NOTES = """# Photosynthesis

Photosynthesis converts light energy into chemical energy. Chlorophyll in the
chloroplasts absorbs red and blue light and reflects green light.

## Light reactions

The light-dependent reactions happen in the thylakoid membranes and make ATP and NADPH.

## Calvin cycle

The Calvin cycle fixes carbon dioxide into sugar in the stroma, using ATP and NADPH.
"""

ANSWER = ["Chlorophyll", " absorbs", " red", " and", " blue", " light", " [1]", " [7]."]


@asynccontextmanager
async def chat_services(
    tmp_path: Path, model: FakeChatModel, *, ingest: bool = True, **chat: Any
) -> AsyncIterator[Services]:
    settings = Settings(data_dir=tmp_path / "data", chat=ChatSettings(**chat))
    async with open_services(
        settings, with_chat=True, chat_model=model, embedder=FakeEmbedder()
    ) as services:
        if ingest:
            path = tmp_path / "photosynthesis.md"
            path.write_text(NOTES, encoding="utf-8")
            result = await services.pipeline.ingest_file(path)
            assert result.status == "completed", result.error
        yield services


async def collect(events: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [e async for e in events]


def engine(services: Services):
    assert services.chat is not None
    return services.chat


def break_search(chat: Any) -> None:
    """Every search fails as if the embedding server were down."""

    async def broken_search(*args: Any, **kwargs: Any) -> Any:
        raise LLMUnavailable("the embedding server is down")

    chat.search.search = broken_search


async def test_answer_streams_events_and_stores_both_messages(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model) as services:
        events = await collect(engine(services).stream_message("What absorbs light?"))
        assert [e.type for e in events] == ["start", "sources"] + ["token"] * len(ANSWER) + ["done"]
        start, sources, done = events[0], events[1], events[-1]
        assert isinstance(start, StartEvent) and isinstance(done, DoneEvent)
        assert isinstance(sources, SourcesEvent)
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        assert [t.seq for t in tokens] == list(range(1, len(ANSWER) + 1))
        assert "".join(t.delta for t in tokens) == "".join(ANSWER)

        # [7] matches no source: gone from the stored answer, recorded in the metadata.
        assert done.message["content"] == "Chlorophyll absorbs red and blue light [1]."
        assert done.message["id"] == start.assistant_message_id
        assert done.message["status"] == "complete"
        assert done.metadata["cited"] == [1] and done.metadata["removed_citations"] == ["[7]"]
        flags = [s["cited"] for s in done.message["sources"]]
        assert flags[0] is True and not any(flags[1:])
        assert len(done.message["sources"]) == len(sources.sources) >= 1
        meta = done.metadata
        assert meta["template"] == "RAG_BASIC" and meta["search_mode"] == "hybrid"
        assert (meta["model"], meta["provider"]) == ("fake-model", "fake")
        assert meta["stats"]["completion_tokens"] == len(ANSWER)
        assert meta["stats"]["finish_reason"] == "stop"
        assert meta["retrieval_ms"] >= 0 and meta["rewritten_query"] is None

        # The prompt carries the numbered sources and the question.
        prompt = model.calls[-1]
        assert prompt[0].role == "system" and "[1]" in prompt[0].content
        assert "[1] photosynthesis.md" in prompt[-1].content
        assert prompt[-1].content.endswith("Question: What absorbs light?")

        conv_id = start.conversation["id"]
        stored = await services.conversations.list_messages(conv_id)
        assert [(m.role, m.status) for m in stored.items] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        assert stored.items[1].content == done.message["content"]
        assert done.conversation["message_count"] == 2
        assert done.conversation["title"] == "What absorbs light?"


async def test_continuation_uses_history_and_rewrites_the_query(tmp_path: Path) -> None:
    model = FakeChatModel(["The", " Calvin", " cycle", " [1]."])
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        first = await chat.process_message("What does the Calvin cycle make?")
        conv_id = first.conversation["id"]
        calls_before = len(model.calls)
        second = await chat.process_message("Where does it happen?", conversation_id=conv_id)
        assert second.conversation["id"] == conv_id
        assert second.conversation["message_count"] == 4
        # One rewrite call, then the answer.
        assert len(model.calls) == calls_before + 2
        rewrite, answer = model.calls[-2], model.calls[-1]
        assert "Last question: Where does it happen?" in rewrite[-1].content
        assert second.metadata["rewritten_query"] == "The Calvin cycle."
        roles = [m.role for m in answer]
        assert roles == ["system", "user", "assistant", "user"]
        assert answer[1].content == "What does the Calvin cycle make?"
        # History loses its old citation numbers: they pointed at other sources.
        assert answer[2].content == "The Calvin cycle."
        assert second.metadata["history_used"] == 2
        history = await services.conversations.history(conv_id, 10)
        assert [m.content for m in history][::2] == [
            "What does the Calvin cycle make?",
            "Where does it happen?",
        ]


async def test_follow_up_without_rewrite(tmp_path: Path) -> None:
    model = FakeChatModel(["Sugar", " [1]."])
    async with chat_services(tmp_path, model, rewrite_followups=False) as services:
        chat = engine(services)
        first = await chat.process_message("What does the Calvin cycle make?")
        await chat.process_message("And where?", conversation_id=first.conversation["id"])
        assert len(model.calls) == 2
        assert [m.role for m in model.calls[-1]] == ["system", "user", "assistant", "user"]


async def test_a_missed_rewrite_falls_back_to_the_question(tmp_path: Path) -> None:
    model = FakeChatModel(["Xylophone", " zebra"])  # the rewrite too: matches nothing
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        first = await chat.process_message("Where is the Calvin cycle?", search_mode="lexical")
        second = await chat.process_message(
            "What does the Calvin cycle make?",
            conversation_id=first.conversation["id"],
            search_mode="lexical",
        )
        assert second.metadata["rewritten_query"] == "Xylophone zebra"
        assert second.metadata["rewrite_fallback"] is True
        assert second.sources and "no_results" not in second.metadata


async def test_a_failed_rewrite_still_searches(tmp_path: Path) -> None:
    model = FakeChatModel(["Sugar", " [1]."])
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        first = await chat.process_message("What does the Calvin cycle make?")
        model.error = LLMUnavailable("gone")  # the rewrite and the answer both fail now
        with pytest.raises(LLMUnavailable):
            await chat.process_message("And where?", conversation_id=first.conversation["id"])
        failed = (await services.conversations.list_messages(first.conversation["id"])).items[-1]
        assert failed.status == "error" and failed.metadata["error_code"] == "CHAT_001"
        assert failed.metadata["rewritten_query"] is None
        assert failed.metadata["retrieval_ms"] >= 0
        assert len(model.calls) == 3


async def test_nothing_relevant_answers_without_the_model(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model) as services:
        events = await collect(
            engine(services).stream_message(
                "Who won the football world cup?", search_mode="lexical"
            )
        )
        assert model.calls == []
        assert [e.type for e in events][:2] == ["start", "sources"]
        assert isinstance(events[1], SourcesEvent) and events[1].sources == []
        done = events[-1]
        assert isinstance(done, DoneEvent)
        text = done.message["content"]
        assert "could not find anything relevant" in text
        assert "Photosynthesis" in text  # a document title to ask about
        assert "nadph" in text.lower()  # a frequent term of the indexed chunks
        assert "".join(e.delta for e in events if isinstance(e, TokenEvent)) == text
        assert done.message["sources"] == [] and done.metadata["cited"] == []
        assert done.metadata["no_results"] is True
        assert done.message["status"] == "complete"


async def test_nothing_indexed_says_so(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model, ingest=False) as services:
        result = await engine(services).process_message("What is photosynthesis?")
        assert model.calls == []
        assert "no indexed documents" in result.message["content"]
        assert result.sources == []


async def test_relevance_threshold_filters_results(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    # Hybrid scores are normalised to at most 1 and cosines too, so nothing reaches 1.5.
    async with chat_services(
        tmp_path, model, relevance_threshold=1.5, min_similarity=1.5
    ) as services:
        result = await engine(services).process_message("What absorbs light?")
        assert model.calls == [] and result.metadata["no_results"] is True
        assert result.metadata["candidates"] >= 1


async def test_closing_the_stream_keeps_a_partial_answer(tmp_path: Path) -> None:
    model = FakeChatModel([f" w{i}" for i in range(40)], delay=0.01)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        seen: list[TokenEvent] = []
        start: StartEvent | None = None
        async with aclosing(chat.stream_message("What absorbs light?")) as events:
            async for event in events:
                if isinstance(event, StartEvent):
                    start = event
                if isinstance(event, TokenEvent):
                    seen.append(event)
                    if len(seen) == 2:
                        break
        assert start is not None
        assert model.cancelled == 1 and model.completed == 0
        messages = (await services.conversations.list_messages(start.conversation["id"])).items
        assert [m.role for m in messages] == ["user", "assistant"]
        user, answer = messages
        assert user.content == "What absorbs light?" and user.status == "complete"
        assert answer.id == start.assistant_message_id
        assert answer.status == "incomplete"
        assert answer.content == "w0 w1"
        assert answer.metadata["stats"]["finish_reason"] == "cancelled"
        assert answer.metadata["stats"]["completion_tokens"] == 2
        # An incomplete answer is not history for the next question.
        history = await services.conversations.history(start.conversation["id"], 10)
        assert [m.role for m in history] == ["user"]


async def test_cancelling_the_task_keeps_a_partial_answer(tmp_path: Path) -> None:
    model = FakeChatModel([f" w{i}" for i in range(200)], delay=0.01)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        conv = await services.conversations.create()
        tokens: list[str] = []
        three = asyncio.Event()

        async def consume() -> None:
            # What the API layer does: the task that forwards events is cancelled.
            async for event in chat.stream_message("What absorbs light?", conversation_id=conv.id):
                if isinstance(event, TokenEvent):
                    tokens.append(event.delta)
                    if len(tokens) == 3:
                        three.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(three.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await chat.drain()
        assert model.cancelled == 1
        messages = (await services.conversations.list_messages(conv.id)).items
        assert [m.role for m in messages] == ["user", "assistant"]
        answer = messages[1]
        assert answer.status == "incomplete"
        assert answer.content == "".join(tokens).strip()
        assert 3 <= len(tokens) < 200
        assert answer.metadata["stats"]["finish_reason"] == "cancelled"


async def test_anyio_cancel_scope_keeps_a_partial_answer(tmp_path: Path) -> None:
    # Starlette and sse-starlette cancel through anyio scopes, which cancel every later
    # await too: the shielded write must still land.
    model = FakeChatModel([f" w{i}" for i in range(200)], delay=0.01)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        conv = await services.conversations.create()
        tokens: list[str] = []
        three = anyio.Event()

        async def consume() -> None:
            async for event in chat.stream_message("What absorbs light?", conversation_id=conv.id):
                if isinstance(event, TokenEvent):
                    tokens.append(event.delta)
                    if len(tokens) == 3:
                        three.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            with anyio.fail_after(10):
                await three.wait()
            tg.cancel_scope.cancel()
        await chat.drain()
        answer = (await services.conversations.list_messages(conv.id)).items[1]
        assert answer.status == "incomplete"
        assert answer.content == "".join(tokens).strip()
        assert answer.metadata["stats"]["finish_reason"] == "cancelled"


async def test_model_error_is_stored_and_reported(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER, error=GenerationFailed("the model crashed"), fail_after=3)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        events = await collect(chat.stream_message("What absorbs light?"))
        assert [e.type for e in events[-4:]] == ["token", "token", "token", "error"]
        error = events[-1]
        assert isinstance(error, ErrorEvent)
        assert error.error_code == "CHAT_004" and "crashed" in error.message
        data = error.to_dict()
        assert set(data) >= {"type", "error_code", "message", "details", "message_id"}
        stored = await services.conversations.get_message(error.message_id or "")
        # Cut off after three tokens reached the client: incomplete, as a stopped answer.
        assert stored.status == "incomplete"
        assert stored.content == "Chlorophyll absorbs red"
        assert stored.metadata["error_code"] == "CHAT_004"
        assert stored.metadata["stats"]["finish_reason"] == "error"
        assert stored.metadata["stats"]["finish_reason"] == "error"
        stats = await services.conversations.statistics()
        assert stats["errors_by_code"] == {"CHAT_004": 1}


async def test_process_message_raises_the_model_error(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER, error=LLMUnavailable("no server"), fail_after=0)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        conv = await services.conversations.create()
        with pytest.raises(LLMUnavailable) as info:
            await chat.process_message("What absorbs light?", conversation_id=conv.id)
        assert info.value.error_code == "CHAT_001"
        messages = (await services.conversations.list_messages(conv.id)).items
        assert [(m.role, m.status) for m in messages] == [
            ("user", "complete"),
            ("assistant", "error"),
        ]
        assert messages[1].metadata["error_code"] == "CHAT_001"


async def test_unknown_or_deleted_conversation_is_chat_005(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model, ingest=False) as services:
        chat = engine(services)
        with pytest.raises(ConversationNotFound) as info:
            await chat.process_message("Hello?", conversation_id="missing")
        assert info.value.error_code == "CHAT_005"
        conv = await services.conversations.create()
        await services.conversations.soft_delete(conv.id)
        with pytest.raises(ConversationNotFound):
            await collect(chat.stream_message("Hello?", conversation_id=conv.id))
        assert (await services.conversations.get(conv.id, include_deleted=True)).message_count == 0
        assert model.calls == []


async def test_invalid_requests_store_nothing(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model, ingest=False, max_message_chars=20) as services:
        chat = engine(services)
        bad: list[dict[str, Any]] = [
            {"message": "   "},
            {"message": "x" * 21},
            {"message": "ok", "template": "NOPE"},
            {"message": "ok", "search_mode": "fuzzy"},
            {"message": "ok", "top_k": 0},
            {"message": "ok", "max_tokens": 0},
        ]
        for kwargs in bad:
            with pytest.raises(InvalidChatRequest) as info:
                await chat.process_message(**kwargs)
            assert info.value.error_code == "CHAT_006"
        assert (await services.conversations.list()).total == 0


async def test_user_template_is_used(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    templates = {"QUIZ": "Write one quiz question.\n---\n{context}\nTopic: {question}"}
    async with chat_services(tmp_path, model, templates=templates) as services:
        result = await engine(services).process_message("Light", template="QUIZ")
        assert result.metadata["template"] == "QUIZ"
        assert model.calls[-1][0].content == "Write one quiz question."
        assert model.calls[-1][-1].content.endswith("Topic: Light")


async def test_search_runs_while_the_question_is_stored(tmp_path: Path) -> None:
    """A new conversation's search starts before its question is committed (TTFT)."""
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        order: list[str] = []
        search, start_turn = chat.search.search, chat.conversations.start_turn

        async def traced_search(*args: Any, **kwargs: Any) -> Any:
            order.append("search started")
            return await search(*args, **kwargs)

        async def traced_turn(*args: Any, **kwargs: Any) -> Any:
            order.append("turn started")
            await asyncio.sleep(0.05)  # a slow disk: the search must not wait for it
            turn = await start_turn(*args, **kwargs)
            order.append("turn stored")
            return turn

        chat.search.search = traced_search  # type: ignore[method-assign]
        chat.conversations.start_turn = traced_turn  # type: ignore[method-assign]
        events = await collect(chat.stream_message("What absorbs light?"))
        assert events[-1].type == "done"
        assert order.index("search started") < order.index("turn stored")


async def test_failed_turn_cancels_the_search_and_stores_nothing(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model, rewrite_followups=False) as services:
        chat = engine(services)
        finished: list[str] = []
        search = chat.search.search

        async def slow_search(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.2)
            finished.append("search")
            return await search(*args, **kwargs)

        chat.search.search = slow_search  # type: ignore[method-assign]
        with pytest.raises(ConversationNotFound):
            await collect(chat.stream_message("What absorbs light?", conversation_id="nope"))
        await asyncio.sleep(0.3)
        assert finished == [] and model.calls == []
        assert (await services.conversations.list()).total == 0


async def test_failed_search_is_stored_as_an_error_answer(tmp_path: Path) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)

        break_search(chat)
        events = await collect(chat.stream_message("What absorbs light?"))
        assert [e.type for e in events] == ["start", "error"]
        error = events[-1]
        assert isinstance(error, ErrorEvent) and error.error_code == "CHAT_001"
        stored = await services.conversations.get_message(error.message_id or "")
        assert stored.status == "error" and model.calls == []
        start = events[0]
        assert isinstance(start, StartEvent)
        page = await services.conversations.list_messages(start.conversation["id"])
        assert [(m.role, m.status) for m in page.items] == [
            ("user", "complete"),
            ("assistant", "error"),
        ]


async def test_consumer_cancelled_after_start_still_finalises_the_answer(tmp_path: Path) -> None:
    """The stop/shutdown path of the API: the consumer task is cancelled while it holds the
    stream suspended after `start` and the search is still running."""
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)
        search = chat.search.search

        async def slow_search(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.5)
            return await search(*args, **kwargs)

        chat.search.search = slow_search  # type: ignore[method-assign]
        stream = chat.stream_message("What absorbs light?")
        first = await anext(stream)
        assert isinstance(first, StartEvent)

        async def consumer() -> None:
            async with aclosing(stream):
                await asyncio.sleep(10)  # busy publishing `start`, say

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await chat.drain()
        stored = await services.conversations.get_message(first.assistant_message_id)
        assert stored.status == "incomplete"
        assert "response_ms" in stored.metadata  # written by the final save, not the insert
        assert model.calls == []


async def test_search_failure_nobody_waits_for_is_not_left_unretrieved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = FakeChatModel(ANSWER)
    async with chat_services(tmp_path, model) as services:
        chat = engine(services)

        break_search(chat)
        stream = chat.stream_message("What absorbs light?")
        first = await anext(stream)
        await asyncio.sleep(0.05)  # the search fails meanwhile
        await stream.aclose()  # and the consumer stops after `start`
        del stream
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        stored = await services.conversations.get_message(first.assistant_message_id)
        assert stored.status == "incomplete"
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
