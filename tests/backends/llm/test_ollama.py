"""OllamaChatModel with the real `ollama` client against a real Ollama-compatible HTTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import pytest

from studyrag.backends.llm.auto import abuild_chat_model, build_chat_model
from studyrag.backends.llm.base import ChatMessage, ChatModel, StreamEnd, TokenDelta
from studyrag.backends.llm.llamacpp import LlamaCppChatModel
from studyrag.backends.llm.ollama import OllamaChatModel
from studyrag.backends.llm.openai import OpenAIChatModel
from studyrag.config import LLMSettings
from studyrag.errors import GenerationFailed, LLMUnavailable, ModelNotFound
from tests.backends.llm.ollama_server import OllamaTestServer, running_ollama_server, unused_port

QUESTION = [
    ChatMessage("system", "Answer from the notes."),
    ChatMessage("user", "what does the krebs cycle produce"),
]
LONG = [ChatMessage("user", " ".join(f"w{i}" for i in range(200)))]


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    with OllamaTestServer() as running:
        yield running


def settings_for(url: str, **overrides: object) -> LLMSettings:
    return LLMSettings.model_validate(
        {"provider": "ollama", "ollama_url": url, "model": "llama3.2", **overrides}
    )


@pytest.fixture
async def model(server: OllamaTestServer) -> AsyncIterator[OllamaChatModel]:
    async with OllamaChatModel(settings_for(server.url, models_cache_ttl=60)) as chat:
        yield chat


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --- server and models -----------------------------------------------------------------------
async def test_health_reports_the_server_version(model: OllamaChatModel) -> None:
    health = await model.health_check()
    assert health["status"] == "ok"
    assert health["version"] == "0.6.0-test"
    assert (health["provider"], health["model"]) == ("ollama", "llama3.2")


async def test_health_of_an_unreachable_server_is_unavailable_not_an_exception() -> None:
    async with OllamaChatModel(settings_for(f"http://127.0.0.1:{unused_port()}")) as chat:
        health = await chat.health_check()
    assert health["status"] == "unavailable"
    assert health["error"]["error_code"] == "CHAT_001"


async def test_list_models_is_cached_for_the_ttl(
    server: OllamaTestServer, model: OllamaChatModel
) -> None:
    first = await model.list_models()
    second = await model.list_models()
    assert [m.name for m in first] == ["llama3.2:latest", "nomic-embed-text:latest"]
    assert second == first
    assert first[0].size is not None and first[0].details["family"] == "llama"
    assert server.requests["/api/tags"] == 1


async def test_list_models_without_a_ttl_asks_every_time(server: OllamaTestServer) -> None:
    async with OllamaChatModel(settings_for(server.url, models_cache_ttl=0)) as chat:
        await chat.list_models()
        await chat.list_models()
    assert server.requests["/api/tags"] == 2


async def test_show_describes_the_model(model: OllamaChatModel) -> None:
    info = await model.show()
    assert info["details"]["family"] == "llama"
    assert info["model_info"]["llama.context_length"] == 8192
    assert info["capabilities"] == ["completion"]


async def test_show_of_a_missing_model_names_the_pull_command(model: OllamaChatModel) -> None:
    with pytest.raises(ModelNotFound) as info:
        await model.show("mistral")
    assert "ollama pull mistral" in info.value.message


async def test_pull_streams_progress_and_refreshes_the_model_list(
    model: OllamaChatModel,
) -> None:
    assert not await model.model_exists("phi3")
    steps = [step async for step in model.pull_model("phi3")]
    assert all(set(step) == {"status", "completed", "total"} for step in steps)
    assert steps[0]["status"] == "pulling manifest"
    assert steps[-1]["status"] == "success"
    downloads = [s for s in steps if s["total"]]
    assert downloads[-1]["completed"] == downloads[-1]["total"] == 1000
    assert [s["completed"] for s in downloads] == sorted(s["completed"] for s in downloads)
    assert await model.model_exists("phi3")


async def test_pull_of_an_unknown_model_is_model_not_found(server: OllamaTestServer) -> None:
    server.behaviour.pullable = False
    async with OllamaChatModel(settings_for(server.url)) as chat:
        with pytest.raises(ModelNotFound) as info:
            async for _ in chat.pull_model("no-such-model"):
                pass
    assert info.value.error_code == "CHAT_002"
    assert "file does not exist" in info.value.message


async def test_exists_and_validate(model: OllamaChatModel) -> None:
    assert await model.model_exists()  # "llama3.2" matches "llama3.2:latest"
    assert await model.model_exists("nomic-embed-text:latest")
    await model.validate_model()
    with pytest.raises(ModelNotFound) as info:
        await model.validate_model("mistral")
    assert info.value.error_code == "CHAT_002"
    assert "`ollama pull mistral`" in info.value.message
    assert "`studyrag models pull mistral`" in info.value.message


async def test_health_flags_a_model_that_is_not_pulled(server: OllamaTestServer) -> None:
    async with OllamaChatModel(settings_for(server.url, model="mistral")) as chat:
        health = await chat.health_check()
    assert health["status"] == "unavailable"
    assert health["error"]["error_code"] == "CHAT_002"


# --- generation ------------------------------------------------------------------------------
async def test_stream_yields_deltas_then_stats_from_the_final_chunk(
    server: OllamaTestServer, model: OllamaChatModel
) -> None:
    events = [e async for e in model.stream(QUESTION, max_tokens=64, temperature=0.0)]
    deltas = [e.text for e in events if isinstance(e, TokenDelta)]
    assert "".join(deltas) == "what does the krebs cycle produce"
    assert len(deltas) == 6
    end = events[-1]
    assert isinstance(end, StreamEnd)
    stats = end.stats
    assert stats.prompt_tokens == 10  # the server counts words of every message
    assert stats.completion_tokens == 6
    assert stats.tokens_per_second == pytest.approx(100.0)  # 10 ms per token, server-side
    assert stats.finish_reason == "stop"
    assert stats.time_to_first_token is not None
    assert 0 < stats.time_to_first_token <= stats.total_time
    sent = server.chat_requests[-1]
    assert sent["stream"] is True
    assert sent["options"]["num_predict"] == 64
    assert sent["options"]["num_ctx"] == 2048
    assert sent["options"]["temperature"] == 0.0
    assert sent["messages"][0] == {"role": "system", "content": "Answer from the notes."}


async def test_stream_stops_at_max_tokens(model: OllamaChatModel) -> None:
    events = [e async for e in model.stream(QUESTION, max_tokens=2, stop=["\n\n"])]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.stats.completion_tokens, end.stats.finish_reason) == (2, "length")


async def test_complete_is_one_non_streaming_request(
    server: OllamaTestServer, model: OllamaChatModel
) -> None:
    completion = await model.complete(QUESTION, max_tokens=64)
    assert completion.text == "what does the krebs cycle produce"
    assert completion.stats.completion_tokens == 6
    assert completion.stats.prompt_tokens == 10
    assert server.chat_requests[-1]["stream"] is False
    assert server.completed_streams == 0


async def test_chat_with_a_missing_model_is_model_not_found(server: OllamaTestServer) -> None:
    async with OllamaChatModel(settings_for(server.url, model="mistral")) as chat:
        with pytest.raises(ModelNotFound) as streamed:
            async for _ in chat.stream(QUESTION, max_tokens=8):
                pass
        with pytest.raises(ModelNotFound):
            await chat.complete(QUESTION, max_tokens=8)
    assert "ollama pull mistral" in streamed.value.message


async def test_unreachable_server_is_llm_unavailable() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    async with OllamaChatModel(settings_for(url)) as chat:
        with pytest.raises(LLMUnavailable) as streamed:
            async for _ in chat.stream(QUESTION, max_tokens=8):
                pass
        with pytest.raises(LLMUnavailable):
            await chat.complete(QUESTION, max_tokens=8)
        with pytest.raises(LLMUnavailable):
            await chat.list_models()
    error = streamed.value
    assert error.error_code == "CHAT_001"
    assert url in error.message and "ollama serve" in error.message
    assert "STUDYRAG_LLM__PROVIDER=llamacpp" in error.message
    assert error.__cause__ is not None  # the vendor error is kept as the cause


async def test_connection_dropped_mid_stream_is_generation_failed(
    server: OllamaTestServer, model: OllamaChatModel
) -> None:
    server.behaviour.drop_after = 2
    received: list[str] = []
    with pytest.raises(GenerationFailed) as info:
        async for event in model.stream(LONG, max_tokens=500):
            if isinstance(event, TokenDelta):
                received.append(event.text)
    assert info.value.error_code == "CHAT_004"
    assert received == ["w0", " w1"]
    assert server.dropped == 1


async def test_server_error_is_generation_failed(
    server: OllamaTestServer, model: OllamaChatModel
) -> None:
    server.behaviour.fail_with = (500, "llama runner process has terminated")
    with pytest.raises(GenerationFailed) as info:
        await model.complete(QUESTION, max_tokens=8)
    assert "llama runner process has terminated" in info.value.message
    with pytest.raises(GenerationFailed):
        async for _ in model.stream(QUESTION, max_tokens=8):
            pass


async def test_closing_the_stream_early_closes_the_request(
    server: OllamaTestServer, model: OllamaChatModel
) -> None:
    server.behaviour.token_delay = 0.05
    async with aclosing(model.stream(LONG, max_tokens=500)) as events:
        received = 0
        async for _ in events:
            received += 1
            if received == 2:
                break
    assert await eventually(lambda: server.disconnects == 1)
    assert server.completed_streams == 0
    # The client is still usable after an abandoned stream.
    server.behaviour.token_delay = 0.0
    assert (await model.complete(QUESTION, max_tokens=3)).stats.finish_reason == "length"


async def test_count_tokens_is_an_estimate_of_four_characters_per_token() -> None:
    async with OllamaChatModel(settings_for("http://127.0.0.1:1")) as chat:
        assert chat.count_tokens("") == 0
        assert chat.count_tokens("abcd" * 25) == 25
        assert chat.count_tokens("abcde") == 2
        assert chat.context_window == 2048


# --- provider choice -------------------------------------------------------------------------
async def test_auto_uses_ollama_when_it_answers(server: OllamaTestServer) -> None:
    chat = await abuild_chat_model(settings_for(server.url, provider="auto"))
    async with chat:
        assert isinstance(chat, OllamaChatModel)
        assert chat.provider == "ollama"
        assert (await chat.complete(QUESTION, max_tokens=2)).text == "what does"


async def test_auto_falls_back_to_the_embedded_model() -> None:
    settings = settings_for(f"http://127.0.0.1:{unused_port()}", provider="auto")
    chat = await abuild_chat_model(settings)
    assert isinstance(chat, LlamaCppChatModel)
    assert chat.provider == "llamacpp"


async def test_sync_build_probes_the_same_way() -> None:
    with running_ollama_server() as url:
        async with build_chat_model(settings_for(url, provider="auto")) as found:
            assert found.provider == "ollama"
    # Not started: the choice is made when the model is built, before anything loads.
    fallback = build_chat_model(settings_for(url, provider="auto"))
    assert fallback.provider == "llamacpp"


@pytest.mark.parametrize(
    ("provider", "expected"),
    [("ollama", OllamaChatModel), ("openai", OpenAIChatModel), ("llamacpp", LlamaCppChatModel)],
)
async def test_explicit_providers_need_no_probe(provider: str, expected: type[ChatModel]) -> None:
    chat = build_chat_model(settings_for("http://127.0.0.1:1", provider=provider))
    assert isinstance(chat, expected)
    assert chat.provider == provider
    await chat.aclose()
