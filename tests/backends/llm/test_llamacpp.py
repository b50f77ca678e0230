"""LlamaCppChatModel with the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import pytest

from studyrag.backends.llm.base import ChatMessage, StreamEnd, StreamEvent, TokenDelta
from studyrag.backends.llm.llamacpp import LlamaCppChatModel
from studyrag.config import LLMSettings
from studyrag.errors import ContextTooLong, LLMUnavailable, ModelNotFound

pytestmark = pytest.mark.slow

SETTINGS = LLMSettings(provider="llamacpp", n_ctx=2048, n_threads=2, seed=42)
CAPITAL = [ChatMessage("user", "What is the capital of France?")]
COUNTING = [ChatMessage("user", "List the numbers from 1 to 100, separated by commas.")]


@pytest.fixture(scope="module")
async def model() -> AsyncIterator[LlamaCppChatModel]:
    async with LlamaCppChatModel(SETTINGS) as chat:
        yield chat


class GenerationSpy:
    """Wraps llama.create_chat_completion on the engine thread: what ran, when, how far."""

    def __init__(self, original: Any) -> None:
        self._original = original
        self.log: list[tuple[str, int]] = []
        self.chunks: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        index = len(self.chunks)
        self.chunks.append(0)
        self.log.append(("start", index))
        inner = self._original(*args, **kwargs)

        def counted() -> Iterator[Any]:
            try:
                for chunk in inner:
                    self.chunks[index] += 1
                    yield chunk
            finally:
                inner.close()
                self.log.append(("end", index))

        return counted()


@pytest.fixture
def spy(model: LlamaCppChatModel, monkeypatch: pytest.MonkeyPatch) -> GenerationSpy:
    # The engine is private; spying on it is the only way to see the thread's side.
    assert model._engine is not None
    llama = model._engine.llama
    watcher = GenerationSpy(llama.create_chat_completion)
    monkeypatch.setattr(llama, "create_chat_completion", watcher)
    return watcher


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


async def test_stream_yields_deltas_then_one_end_with_sane_stats(
    model: LlamaCppChatModel,
) -> None:
    events = await collect(model.stream(CAPITAL, max_tokens=16))
    deltas = [e for e in events[:-1] if isinstance(e, TokenDelta)]
    assert len(deltas) == len(events) - 1 > 0
    assert "".join(d.text for d in deltas).strip()
    end = events[-1]
    assert isinstance(end, StreamEnd)
    stats = end.stats
    assert stats.provider == "llamacpp"
    assert stats.model == "SmolLM2-135M-Instruct.Q4_1"
    # The GGUF's chat template wraps the question in a system prompt and role markers.
    assert stats.prompt_tokens > model.count_tokens(CAPITAL[0].content) + 5
    assert 0 < stats.completion_tokens <= 16
    assert stats.finish_reason in {"stop", "length"}
    assert stats.time_to_first_token is not None
    assert 0 < stats.time_to_first_token <= stats.total_time
    assert stats.tokens_per_second > 0


async def test_count_tokens_uses_the_model_tokenizer(model: LlamaCppChatModel) -> None:
    assert model.count_tokens("") == 0
    assert model.count_tokens(" word" * 50) == 50  # one BPE token per " word"
    assert model.context_window == 2048


async def test_closing_mid_stream_stops_generation_and_frees_the_model(
    model: LlamaCppChatModel, spy: GenerationSpy
) -> None:
    control = await model.complete(COUNTING, max_tokens=48)
    assert control.stats.completion_tokens > 20  # the prompt does make a long answer
    async with aclosing(model.stream(COUNTING, max_tokens=48)) as events:
        received = 0
        async for _ in events:
            received += 1
            if received == 2:
                break
    after = await asyncio.wait_for(model.complete(CAPITAL, max_tokens=8), timeout=120)
    assert after.text and after.stats.finish_reason in {"stop", "length"}
    # The engine thread stopped pulling tokens right after the close, well short of the
    # control run, and only then started the next generation.
    assert spy.chunks[1] <= received + 3 < spy.chunks[0]
    assert spy.log == [("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]


async def test_concurrent_generations_are_serialised(
    model: LlamaCppChatModel, spy: GenerationSpy
) -> None:
    first, second = await asyncio.gather(
        collect(model.stream(CAPITAL, max_tokens=8)),
        collect(model.stream([ChatMessage("user", "Name a colour.")], max_tokens=8)),
    )
    for events in (first, second):
        assert isinstance(events[-1], StreamEnd)
        assert any(isinstance(e, TokenDelta) for e in events)
    assert len(spy.log) == 4
    (start_a, a), (end_a, a2), (start_b, b), (end_b, b2) = spy.log
    assert (start_a, end_a, start_b, end_b) == ("start", "end", "start", "end")
    assert a == a2 and b == b2 and a != b


async def test_a_prompt_longer_than_the_context_is_refused_before_generating(
    model: LlamaCppChatModel, spy: GenerationSpy
) -> None:
    with pytest.raises(ContextTooLong) as info:
        await model.complete([ChatMessage("user", "word " * 3000)], max_tokens=16)
    assert info.value.error_code == "CHAT_003"
    assert info.value.details["context_window"] == 2048
    assert spy.log == []
    # The prompt fits but the requested answer does not.
    with pytest.raises(ContextTooLong):
        await model.complete(CAPITAL, max_tokens=2040)


async def test_event_loop_keeps_running_during_generation(model: LlamaCppChatModel) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        before = ticks
        completion = await model.complete(COUNTING, max_tokens=32)
        during = ticks - before
    finally:
        task.cancel()
    assert completion.stats.completion_tokens > 10
    # A generation that blocked the loop would let the ticker run at most once or twice.
    assert during >= 5


async def test_instances_share_one_loaded_model(model: LlamaCppChatModel) -> None:
    async with LlamaCppChatModel(SETTINGS) as other:
        assert other._engine is model._engine
        assert (await other.complete(CAPITAL, max_tokens=4)).text
    assert model._engine is not None
    assert (await model.complete(CAPITAL, max_tokens=4)).text


async def test_missing_model_file_is_model_not_found(tmp_path: Any) -> None:
    missing = tmp_path / "nope.gguf"
    chat = LlamaCppChatModel(SETTINGS.model_copy(update={"model_path": str(missing)}))
    with pytest.raises(ModelNotFound) as info:
        await chat.start()
    assert info.value.error_code == "CHAT_002"
    # The file's name, never where the server keeps it (a student sees this error too).
    assert "nope.gguf" in info.value.message
    assert str(tmp_path) not in info.value.message
    assert str(tmp_path) not in str(info.value.details)
    assert "STUDYRAG_LLM__MODEL_PATH" in info.value.message
    await chat.aclose()


async def test_a_gguf_that_cannot_load_names_the_file_not_the_server_path(tmp_path: Any) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(4092))
    chat = LlamaCppChatModel(SETTINGS.model_copy(update={"model_path": str(broken)}))
    with pytest.raises(LLMUnavailable) as info:
        await chat.start()
    assert info.value.error_code == "CHAT_001"
    assert "broken.gguf" in info.value.message
    assert str(tmp_path) not in info.value.message
    assert str(tmp_path) not in str(info.value.details)
    await chat.aclose()
