"""What the engine makes of a model's bad habits: loops, prompt echo, copied answers, and
questions too long for the window (fake chat model, real stores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from studyrag.backends.llm.fake import FakeChatModel
from studyrag.chat.engine import DoneEvent, TokenEvent, check_message
from studyrag.config import ChatSettings, LLMSettings, Settings
from studyrag.errors import ContextTooLong
from tests.chat.test_engine import chat_services, collect, engine

LOOP = "Chlorophyll absorbs red and blue light [1]. "


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else f" {p}" for i, p in enumerate(parts) if p or i == 0]


async def test_a_looping_answer_stops_the_model_and_keeps_one_copy(tmp_path: Path) -> None:
    model = FakeChatModel(words(LOOP * 30))
    async with chat_services(tmp_path, model) as services:
        events = await collect(engine(services).stream_message("What absorbs light?"))
        done = events[-1]
        assert isinstance(done, DoneEvent)
        assert done.message["content"] == LOOP.strip()
        meta = done.metadata
        assert meta["stats"]["finish_reason"] == "repetition"
        assert meta["loop"]["kind"] in ("sentence", "ngram")
        # The model was stopped early: far fewer pieces than the script, and the stream
        # showed less than two copies.
        streamed = "".join(e.delta for e in events if isinstance(e, TokenEvent))
        assert len(streamed) < 2 * len(LOOP)
        assert model.cancelled == 1 and model.completed == 0


async def test_loop_detection_can_be_turned_off(tmp_path: Path) -> None:
    model = FakeChatModel(words(LOOP * 3))
    async with chat_services(tmp_path, model, stop_loops=False) as services:
        done = (await collect(engine(services).stream_message("What absorbs light?")))[-1]
        assert isinstance(done, DoneEvent)
        assert done.message["content"] == (LOOP * 3).strip()


async def test_prompt_echo_never_reaches_the_answer(tmp_path: Path) -> None:
    script = [
        *words("Question: What absorbs light?\nAnswer: Chlorophyll absorbs red light [1]."),
        "\n\nSources:",
        *words("\n[1] photosynthesis.md, Photosynthesis"),
    ]
    model = FakeChatModel(script)
    async with chat_services(tmp_path, model) as services:
        events = await collect(engine(services).stream_message("What absorbs light?"))
        done = events[-1]
        assert isinstance(done, DoneEvent)
        assert done.message["content"] == "Chlorophyll absorbs red light [1]."
        streamed = "".join(e.delta for e in events if isinstance(e, TokenEvent))
        assert "Question:" not in streamed and "Answer:" not in streamed
        # The model is told to stop at a new prompt section: "\nSources:" ended it.
        assert "Sources" not in streamed
        assert [e.seq for e in events if isinstance(e, TokenEvent)] == list(
            range(1, len([e for e in events if isinstance(e, TokenEvent)]) + 1)
        )


async def test_a_follow_up_that_copies_the_last_answer_is_asked_again(tmp_path: Path) -> None:
    first = "Chlorophyll absorbs red and blue light and reflects green light in leaves [1]."
    model = FakeChatModel(words(first))
    async with chat_services(tmp_path, model, rewrite_followups=False) as services:
        chat = engine(services)
        one = await chat.process_message("What absorbs light?")
        assert one.message["content"] == first
        # The model copies itself on the follow-up, unless it no longer sees its answer.
        second = "Green light is reflected [1]."

        def pieces(messages: list) -> list[str]:
            seen = any(m.role == "assistant" and "green" in m.content for m in messages)
            return words(first if seen else second)

        model.script = None
        model._pieces = pieces  # type: ignore[method-assign]
        two = await chat.process_message(
            "And what does it reflect?", conversation_id=one.conversation["id"]
        )
        assert two.message["content"] == second
        assert two.metadata["history_copy"]["retried"] is True
        assert two.metadata["history_copy"]["loop"]["kind"] == "history"
        # Both prompts of the follow-up carried the earlier question.
        assert any("What absorbs light?" in m.content for m in model.calls[-1])


async def test_earlier_answers_enter_the_prompt_clipped(tmp_path: Path) -> None:
    long_answer = " ".join(f"w{i}" for i in range(300)) + " [1]."
    model = FakeChatModel(words(long_answer))
    async with chat_services(tmp_path, model, rewrite_followups=False) as services:
        chat = engine(services)
        one = await chat.process_message("What absorbs light?")
        model.script = words("Green light is reflected [1].")
        await chat.process_message("And then?", conversation_id=one.conversation["id"])
        earlier = [m for m in model.calls[-1] if m.role == "assistant"]
        assert len(earlier) == 1
        # The fake counts words: clipped to history_answer_tokens words and marked.
        limit = services.settings.chat.history_answer_tokens
        assert len(earlier[0].content.split()) <= limit + 1
        assert earlier[0].content.endswith("…")


def test_a_question_too_long_for_the_window_is_refused_with_a_hint() -> None:
    settings = Settings(
        llm=LLMSettings(max_tokens=384), chat=ChatSettings(max_message_chars=20_000)
    )
    model = FakeChatModel(n_ctx=2048)  # one token per word
    ok = "word " * 1000
    assert check_message(ok, settings, model=model) == ok.strip()
    with pytest.raises(ContextTooLong) as info:
        check_message("word " * 1700, settings, model=model)
    err = info.value
    assert err.error_code == "CHAT_003" and err.status_code == 413
    assert err.details["tokens"] == 1700 and 1000 < err.details["limit"] < 1700
    assert err.details["context_window"] == 2048 and err.details["max_tokens"] == 384
    assert "Shorten the message to about" in err.hint
    # A shorter answer leaves more room for the question.
    assert check_message("word " * 1700, settings, model=model, max_tokens=64)
    # Without a model only the character limit applies.
    assert check_message("word " * 1700, settings)


async def test_the_engine_refuses_at_once_and_stores_nothing(tmp_path: Path) -> None:
    model = FakeChatModel(["never"], n_ctx=512)
    async with chat_services(tmp_path, model, ingest=False) as services:
        with pytest.raises(ContextTooLong):
            await engine(services).process_message("word " * 500)
        assert (await services.conversations.list()).total == 0
        assert model.calls == []
