"""Chat overhead: time to first token and tokens/s through ChatEngine vs the ChatModel alone.

Usage: python -m bench.chat_latency [--questions N] [--max-tokens T]
Same prompt both ways: the engine's model is wrapped by a recorder that keeps the exact
messages the engine sent, and the bare model is then given those messages. Order alternates
per question, and before every timed run llama.cpp's prompt cache is put in the same state.
The engine runs twice per question, with the citation check (chat.attribution) on and off,
in rotating order with the bare model: time to first token must not change with it, and its
own cost (metadata attribution_ms) is added only after the last token, before `done`.
Also measures the resident memory of a real `studyrag serve` with both models
(--no-memory skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import CACHE, percentile, write_result
from studyrag.backends.llm.base import ChatMessage, ChatModel, StreamEvent, TokenDelta
from studyrag.backends.llm.llamacpp import LlamaCppChatModel
from studyrag.chat.engine import DoneEvent, TokenEvent
from studyrag.config import ChatSettings, LLMSettings, Settings
from studyrag.services import open_services

QUESTIONS = [
    "What does chlorophyll absorb?",
    "When did the French Revolution begin?",
    "What do mitochondria make?",
    "At what temperature does water boil?",
    "What powered the textile mills of Manchester?",
    "What is the chemical name of table salt?",
]


class Recorder(ChatModel):
    """Delegates to the real model and keeps the last messages it was asked to answer."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.last: list[ChatMessage] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        self.last = list(messages)
        async for event in self.inner.stream(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop
        ):
            yield event


async def bare(model: ChatModel, messages: list[ChatMessage], max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = last = None
    n = 0
    async for event in model.stream(messages, max_tokens=max_tokens, temperature=0.0):
        if isinstance(event, TokenDelta):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
    assert first is not None and last is not None
    return {"ttft": first - t0, "tokens": n, "rate": (n - 1) / (last - first) if n > 1 else 0}


async def engine_run(services: Any, question: str, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = last = None
    n = 0
    retrieval = tail = 0.0
    attribution_ms = sentences = None
    async for event in services.chat.stream_message(question, max_tokens=max_tokens):
        if isinstance(event, TokenEvent):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
        elif isinstance(event, DoneEvent):
            retrieval = event.metadata["retrieval_ms"] / 1000
            attribution_ms = event.metadata.get("attribution_ms")
            sentences = (event.metadata.get("attribution") or {}).get("total")
            tail = time.perf_counter() - (last or t0)
    assert first is not None and last is not None
    return {
        "ttft": first - t0,
        "tokens": n,
        "rate": (n - 1) / (last - first) if n > 1 else 0,
        "retrieval": retrieval,
        # From the last token to `done`: the final save, and the citation check when on.
        "tail": tail,
        "attribution_ms": attribution_ms,
        "sentences": sentences,
    }


async def overhead(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    llm = LLMSettings(max_tokens=args.max_tokens, temperature=0.0, n_threads=2)
    settings = Settings(
        data_dir=data, llm=llm, chat=ChatSettings(rewrite_followups=False, template="RAG_BASIC")
    )
    inner = LlamaCppChatModel(llm)
    recorder = Recorder(inner)
    rows = []
    async with inner, open_services(settings, with_chat=True, chat_model=recorder) as services:
        await services.embedder.start()
        await engine_run(services, "warm up the caches", 4)
        # llama.cpp reuses the KV cache of the longest prefix shared with the last prompt, so
        # a prompt run twice in a row costs almost nothing the second time. Before every
        # timed run the cache gets the same state, a previous question's prompt (same system
        # message, different question), as in a real conversation.
        previous = [m for m in recorder.last if m.role == "system"]
        previous.append(ChatMessage("user", "Say hello in one word."))

        async def same_cache_state() -> None:
            async for _ in inner.stream(previous, max_tokens=1, temperature=0.0):
                pass

        chat_settings = services.chat.settings.chat

        async def engine_with(attribution: bool, question: str) -> dict[str, Any]:
            chat_settings.attribution = attribution
            await same_cache_state()
            return await engine_run(services, question, args.max_tokens)

        async def model_alone(messages: list[ChatMessage]) -> dict[str, Any]:
            await same_cache_state()
            return await bare(inner, messages, args.max_tokens)

        for i, question in enumerate(QUESTIONS * args.rounds):
            # The prompt is the same for a question: record it first (untimed).
            await engine_run(services, question, 2)
            messages = list(recorder.last)
            got: dict[str, Any] = {}
            # Rotate the order of the three runs, so none always goes first.
            order = ["on", "off", "model"][i % 3 :] + ["on", "off", "model"][: i % 3]
            for name in order:
                if name == "model":
                    got[name] = await model_alone(messages)
                else:
                    got[name] = await engine_with(name == "on", question)
                    assert recorder.last == messages, "the engine's prompt changed between runs"
            eng, alone = got["on"], got["model"]
            eng["off"] = got["off"]
            # The same search on its own, for a ratio that doesn't trust the engine's timing.
            t = time.perf_counter()
            await services.search.search(question, top_k=settings.chat.top_k)
            eng["retrieval_alone"] = time.perf_counter() - t
            rows.append({"question": question, "engine": eng, "model": alone})
    ttft_ratio = [
        r["engine"]["ttft"] / (r["model"]["ttft"] + r["engine"]["retrieval"]) for r in rows
    ]
    ttft_ratio_alone = [
        r["engine"]["ttft"] / (r["model"]["ttft"] + r["engine"]["retrieval_alone"]) for r in rows
    ]
    rate_ratio = [r["engine"]["rate"] / r["model"]["rate"] for r in rows if r["model"]["rate"]]
    on_off = [r["engine"]["ttft"] / r["engine"]["off"]["ttft"] for r in rows]
    attribution_ms = [r["engine"]["attribution_ms"] for r in rows]
    return {
        "samples": len(rows),
        "max_tokens": args.max_tokens,
        "ttft_engine_ms_median": round(
            1000 * statistics.median(r["engine"]["ttft"] for r in rows), 1
        ),
        "ttft_model_ms_median": round(
            1000 * statistics.median(r["model"]["ttft"] for r in rows), 1
        ),
        "engine_overhead_ms_median": round(
            1000
            * statistics.median(
                r["engine"]["ttft"] - r["model"]["ttft"] - r["engine"]["retrieval"] for r in rows
            ),
            1,
        ),
        "retrieval_ms_median": round(
            1000 * statistics.median(r["engine"]["retrieval"] for r in rows), 1
        ),
        "ttft_ratio_vs_model_plus_retrieval_median": round(statistics.median(ttft_ratio), 3),
        "ttft_ratio_vs_model_plus_search_alone_median": round(
            statistics.median(ttft_ratio_alone), 3
        ),
        "search_alone_ms_median": round(
            1000 * statistics.median(r["engine"]["retrieval_alone"] for r in rows), 1
        ),
        "ttft_target": "<= 1.05",
        "tokens_per_s_engine_median": round(
            statistics.median(r["engine"]["rate"] for r in rows), 1
        ),
        "tokens_per_s_model_median": round(statistics.median(r["model"]["rate"] for r in rows), 1),
        "tokens_per_s_ratio_median": round(statistics.median(rate_ratio), 3),
        "tokens_per_s_target": ">= 0.95",
        "attribution": {
            "ttft_on_ms_median": round(
                1000 * statistics.median(r["engine"]["ttft"] for r in rows), 1
            ),
            "ttft_off_ms_median": round(
                1000 * statistics.median(r["engine"]["off"]["ttft"] for r in rows), 1
            ),
            "ttft_ratio_on_vs_off_median": round(statistics.median(on_off), 3),
            "own_ms_p50": round(percentile(attribution_ms, 50), 1),
            "own_ms_p90": round(percentile(attribution_ms, 90), 1),
            "tail_on_ms_median": round(
                1000 * statistics.median(r["engine"]["tail"] for r in rows), 1
            ),
            "tail_off_ms_median": round(
                1000 * statistics.median(r["engine"]["off"]["tail"] for r in rows), 1
            ),
            "sentences_median": statistics.median(r["engine"]["sentences"] for r in rows),
        },
    }


def server_memory(data: Path) -> dict[str, Any]:
    """RSS of a real `studyrag serve` with MiniLM and SmolLM2 loaded, idle and after a chat."""
    from tests.conftest import free_port

    port = free_port()
    exe = str(Path(sys.executable).with_name("studyrag"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    env.update(STUDYRAG_LLM__MAX_TOKENS="32", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def rss_mb() -> float:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        idle = rss_mb()
        httpx.post(f"{base}/api/chat/message", json={"message": QUESTIONS[0]}, timeout=120)
        after = rss_mb()
        peak = 0.0
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
        return {
            "rss_idle_mb": round(idle, 1),
            "rss_after_chat_mb": round(after, 1),
            "rss_peak_mb": round(peak, 1),
        }
    finally:
        proc.terminate()
        proc.wait(30)


async def main(args: argparse.Namespace) -> None:
    from tests.e2e.test_ingest_search import write_corpus

    work = CACHE / "chat-latency"
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    async with open_services(Settings(data_dir=data)) as services:
        await services.pipeline.ingest_paths([write_corpus(work / "notes")])
    result: dict[str, Any] = {"overhead": await overhead(args, data)}
    print(result)
    if args.memory:
        result["memory"] = await asyncio.to_thread(server_memory, data)
        print(result["memory"])
    write_result("chat_latency", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    asyncio.run(main(parser.parse_args()))
