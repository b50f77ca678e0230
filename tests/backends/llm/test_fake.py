"""FakeChatModel: the in-package stand-in that upper layers test against."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from studyrag.backends.llm.base import ChatMessage, StreamEnd, TokenDelta
from studyrag.backends.llm.fake import FakeChatModel
from studyrag.errors import ContextTooLong, GenerationFailed

QUESTION = [ChatMessage("system", "be brief"), ChatMessage("user", "what is a mitochondrion")]


async def test_echoes_the_last_user_message_then_ends_with_measured_stats() -> None:
    async with FakeChatModel() as model:
        events = [e async for e in model.stream(QUESTION, max_tokens=50)]
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert "".join(d.text for d in deltas) == "what is a mitochondrion"
    assert isinstance(events[-1], StreamEnd)
    assert sum(isinstance(e, StreamEnd) for e in events) == 1
    stats = events[-1].stats
    assert (stats.prompt_tokens, stats.completion_tokens) == (6, 4)
    assert stats.finish_reason == "stop"
    assert stats.provider == "fake"
    assert stats.time_to_first_token is not None
    assert stats.total_time >= stats.time_to_first_token
    assert model.started and model.closed
    assert model.calls == [QUESTION]


async def test_script_is_cut_by_max_tokens_and_by_stop_strings() -> None:
    model = FakeChatModel(["Paris", " is", " the", " capital", "."])
    short = await model.complete(QUESTION, max_tokens=2)
    assert (short.text, short.stats.finish_reason) == ("Paris is", "length")
    stopped = await model.complete(QUESTION, max_tokens=10, stop=[" capital"])
    assert (stopped.text, stopped.stats.finish_reason) == ("Paris is the", "stop")


async def test_closing_the_stream_counts_as_cancelled() -> None:
    model = FakeChatModel(["a"] * 100, delay=0.001)
    async with aclosing(model.stream(QUESTION, max_tokens=100)) as events:
        received = 0
        async for _ in events:
            received += 1
            if received == 2:
                break
    assert (model.cancelled, model.completed) == (1, 0)


async def test_injected_error_after_some_tokens() -> None:
    model = FakeChatModel(["a", "b", "c"], error=GenerationFailed("boom"), fail_after=2)
    seen: list[str] = []
    with pytest.raises(GenerationFailed):
        async for event in model.stream(QUESTION, max_tokens=10):
            if isinstance(event, TokenDelta):
                seen.append(event.text)
    assert seen == ["a", "b"]


async def test_prompt_longer_than_the_window_is_refused() -> None:
    model = FakeChatModel(n_ctx=16)
    with pytest.raises(ContextTooLong) as info:
        await model.complete([ChatMessage("user", "word " * 20)], max_tokens=4)
    assert info.value.error_code == "CHAT_003"
