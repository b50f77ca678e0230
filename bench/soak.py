"""Soak: N clients for T minutes against a real `studyrag serve`; nothing may get lost.

Usage: python -m bench.soak [--clients 6] [--minutes 3] [--max-tokens 24] [--think 1.0]
                            [--per-conversation 3] [--sse-drop 0.8] [--upload-every 30]
                            [--rate-limit 1000] [--sample 5]

The bench starts `studyrag serve` (tests/web/harness.py) on a free port with a temporary
data dir, the real MiniLM and the embedded SmolLM2 (answers capped at `--max-tokens`), ingests
the e2e corpus, and runs every client in this process for `--minutes`:

- WebSocket chat: half the clients, `--per-conversation` sockets on each conversation. One of
  them asks (the asker rotates), every socket follows the one shared stream; each must get
  the answer's stream_end with token seqs 1..n, the same on every socket.
- SSE: a third of the clients, a conversation each. Each POSTs a question, drops the
  connection after a few events (with probability `--sse-drop`), and reattaches with GET
  and `Last-Event-ID`: the events of both parts must be one answer's ids 1..n and seqs 1..n.
- REST search: the rest, `POST /api/search`.
- Notebook: one `/ws/notebooks/{id}` watcher while a small document is uploaded to that
  notebook every `--upload-every` s: each must reach `completed` on the socket.

A lost answer is a (client, answer) pair with no stream_end/done, or with a gap or duplicate
in its seqs or event ids. Clients wait `--think` s (±50 %) between requests. The message rate
limit (per address: every client here is 127.0.0.1) is raised to `--rate-limit` per minute so
the clients stay under it; any RATE_001 is reported apart from the errors. The server's RSS
(and anonymous RSS) is sampled every `--sample` s, with a least-squares slope in MB/minute.
After the run: the server's own counts (/api/chat/stats), the stored messages' statuses and
ERROR lines of the server log. Exits 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from tests.api.conftest import SSEEvent, sse_events
from tests.conftest import free_port
from tests.e2e.test_ingest_search import write_corpus
from tests.web.harness import serve, upload

from bench.chat_latency import QUESTIONS
from bench.common import CACHE, summary_ms, write_result

ANSWER_TIMEOUT = 180.0  # an answer that has not ended by then is lost
RATE = "RATE_001"
RETENTION = 300.0  # GenerationHub keeps a finished answer's buffer this long (resume, replay)


@dataclass
class Tally:
    """Everything the clients counted, by kind of client."""

    asked: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, code)
    rate_limited: Counter[str] = field(default_factory=Counter)
    ttft: dict[str, list[float]] = field(default_factory=dict)
    total: dict[str, list[float]] = field(default_factory=dict)
    lost_detail: list[dict[str, Any]] = field(default_factory=list)
    message_ids: set[str] = field(default_factory=set)

    def error(self, kind: str, code: str) -> None:
        if code == RATE:
            self.rate_limited[kind] += 1
        else:
            self.errors[(kind, code)] += 1

    def time(self, kind: str, *, ttft: float | None, total: float | None) -> None:
        if ttft is not None:
            self.ttft.setdefault(kind, []).append(ttft)
        if total is not None:
            self.total.setdefault(kind, []).append(total)

    def lost(self, kind: str, why: str, **detail: Any) -> None:
        self.outcomes[(kind, "lost")] += 1
        self.lost_detail.append({"kind": kind, "why": why, **detail})


def contiguous(values: list[int]) -> bool:
    return values == list(range(1, len(values) + 1))


async def pause(rng: random.Random, think: float) -> None:
    await asyncio.sleep(think * rng.uniform(0.5, 1.5))


# --- WebSocket chat: several sockets share one conversation's stream -----------------------
@dataclass
class Stream:
    """What one socket received of one answer."""

    seqs: list[int] = field(default_factory=list)
    end: str | None = None  # the stored status from stream_end, or "error:<code>"
    first_token: float | None = None
    ended: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a token or the end came


class ChatSocket:
    """One /ws/chat client: a reader task files every frame under its answer."""

    def __init__(self, url: str, tally: Tally) -> None:
        self.url, self.tally = url, tally
        self.streams: dict[str, Stream] = {}
        self.signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connection: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.connects = 0
        self.refused: list[str] = []  # codes of error frames without a message_id

    def stream(self, message_id: str) -> Stream:
        return self.streams.setdefault(message_id, Stream())

    @property
    def alive(self) -> bool:
        return self.reader is not None and not self.reader.done()

    async def connect(self) -> None:
        self.connection = await websockets.connect(self.url, open_timeout=60, max_size=None)
        hello = json.loads(await self.connection.recv())
        assert hello["type"] == "connected", hello
        self.connects += 1
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                frame = json.loads(raw)
                kind, mid = frame["type"], frame.get("message_id")
                if kind == "stream_start":
                    self.signals.put_nowait(frame)
                elif kind == "stream_chunk":
                    s = self.stream(mid)
                    s.seqs.append(frame["seq"])
                    s.first_token = s.first_token or time.perf_counter()
                    s.changed.set()
                elif kind == "stream_end":
                    s = self.stream(mid)
                    s.end, s.ended = frame["message"]["status"], time.perf_counter()
                    s.done.set()
                    s.changed.set()
                elif kind == "error" and mid:  # a failed answer: every socket gets it
                    s = self.stream(mid)
                    s.end, s.ended = f"error:{frame['error_code']}", time.perf_counter()
                    s.done.set()
                    s.changed.set()
                    self.signals.put_nowait(frame)  # it may have failed before stream_start
                elif kind == "error":  # a refused frame: only its sender gets it
                    self.refused.append(frame["error_code"])
                    self.signals.put_nowait(frame)
        except websockets.ConnectionClosed as exc:
            self.tally.error("ws", f"closed_{exc.rcvd.code if exc.rcvd else 1006}")

    async def aclose(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.reader is not None:
            with suppress(asyncio.CancelledError):
                await self.reader


async def drop_and_resume(socket: ChatSocket, message_id: str, keep: int, tally: Tally) -> None:
    """Close this socket after `keep` tokens of the answer, reconnect and send `resume`."""
    stream = socket.stream(message_id)
    deadline = time.monotonic() + ANSWER_TIMEOUT
    with suppress(TimeoutError):  # a stalled answer is dropped all the same
        while len(stream.seqs) < keep and not stream.done.is_set():
            stream.changed.clear()
            await asyncio.wait_for(stream.changed.wait(), max(0.0, deadline - time.monotonic()))
    if stream.done.is_set():
        return  # the answer ended first: nothing to drop
    await socket.aclose()
    await socket.connect()
    tally.outcomes[("ws", "dropped")] += 1
    if not stream.done.is_set():  # else its stream_end came in before the close
        resume = {"type": "resume", "message_id": message_id, "last_seq": len(stream.seqs)}
        await socket.connection.send(json.dumps(resume))


async def ws_conversation(
    sockets: list[ChatSocket],
    tally: Tally,
    until: float,
    *,
    think: float,
    drop: float,
    seed: int,
) -> None:
    """Ask on the sockets in turn; every socket must receive every answer whole."""
    rng = random.Random(seed)
    for turn in itertools.count():
        if time.monotonic() >= until:
            return
        for s in sockets:
            if not s.alive:  # a dropped socket comes back (counted in errors) for the next one
                await s.connect()
        asker = sockets[turn % len(sockets)]
        while not asker.signals.empty():  # stream_starts of earlier answers asked by others
            asker.signals.get_nowait()
        question = rng.choice(QUESTIONS)
        await asker.connection.send(json.dumps({"type": "typing", "is_typing": True}))
        t0 = time.perf_counter()
        await asker.connection.send(json.dumps({"type": "message", "content": question}))
        tally.asked["ws"] += 1
        try:
            frame = await asyncio.wait_for(asker.signals.get(), ANSWER_TIMEOUT)
        except TimeoutError:
            tally.lost("ws", "no stream_start or error for a question")
            continue
        if frame["type"] == "error" and not frame.get("message_id"):
            tally.error("ws", frame["error_code"])
            tally.outcomes[("ws", "refused")] += 1
            await asyncio.sleep(float(frame.get("retry_after") or 0) or think)
            continue
        mid = frame["message_id"]
        tally.message_ids.add(mid)
        watching = [s for s in sockets if s.alive]
        others = [s for s in watching if s is not asker]
        if others and rng.random() < drop:  # a watcher loses its connection mid-answer
            victim = rng.choice(others)
            await drop_and_resume(victim, mid, keep=rng.randint(0, 8), tally=tally)
        with suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.stream(mid).done.wait() for s in watching)), ANSWER_TIMEOUT
            )
        reference = asker.stream(mid).seqs
        for s in watching:
            got = s.stream(mid)
            if got.end is None:
                tally.lost(
                    "ws", "no stream_end", message_id=mid, seqs=len(got.seqs), refused=s.refused
                )
            elif not contiguous(got.seqs) or got.seqs != reference:
                tally.lost("ws", "seq gap or duplicate", message_id=mid, seqs=got.seqs[:50])
            elif got.end.startswith("error:"):
                tally.outcomes[("ws", "failed")] += 1
                if s is asker:
                    tally.error("ws", got.end.removeprefix("error:"))
            else:
                tally.outcomes[("ws", got.end)] += 1
        mine = asker.stream(mid)
        tally.time(
            "ws",
            ttft=mine.first_token - t0 if mine.first_token else None,
            total=mine.ended - t0 if mine.ended else None,
        )
        await pause(rng, think)


# --- SSE: ask, drop, resume with Last-Event-ID ----------------------------------------------
def sse_check(events: list[SSEEvent]) -> str | None:
    """Why these events are not one whole answer (None when they are)."""
    if not events or events[-1].event not in ("done", "error"):
        return "no done"
    gens = {(e.id or "").rsplit(":", 1)[0] for e in events}
    numbers = [int((e.id or "0:0").rsplit(":", 1)[1]) for e in events]
    if len(gens) != 1 or not contiguous(numbers):
        return "event id gap or duplicate"
    if not contiguous([e.data["seq"] for e in events if e.event == "token"]):
        return "seq gap or duplicate"
    return None


@dataclass
class Collected:
    """The SSE events of one answer, across a drop and its resume."""

    events: list[SSEEvent] = field(default_factory=list)
    first: float | None = None  # when the first token came

    def add(self, event: SSEEvent) -> bool:
        """Keep the event; True when the answer ended."""
        self.events.append(event)
        if event.event == "token" and self.first is None:
            self.first = time.perf_counter()
        return event.event in ("done", "error")


async def sse_client(
    http: httpx.AsyncClient,
    cid: str,
    tally: Tally,
    until: float,
    *,
    think: float,
    drop: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    url = f"/api/chat/stream/{cid}"
    while time.monotonic() < until:
        question = rng.choice(QUESTIONS)
        # Events before the drop: 1 = start, 2 = sources, then tokens.
        drop_after = rng.randint(1, 8) if rng.random() < drop else 10**9
        got = Collected()
        t0 = time.perf_counter()
        tally.asked["sse"] += 1
        async with http.stream("POST", url, json={"message": question}) as response:
            if response.status_code != 200:
                tally.error("sse", json.loads(await response.aread())["error_code"])
                tally.outcomes[("sse", "refused")] += 1
                await pause(rng, think)
                continue
            async for event in sse_events(response):
                if got.add(event) or len(got.events) >= drop_after:
                    break  # leaving the block closes the connection: a real drop
        events = got.events
        if events and events[-1].event not in ("done", "error"):
            tally.outcomes[("sse", "dropped")] += 1
            headers = {"Last-Event-ID": events[-1].id or ""}
            async with http.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    tally.error("sse", json.loads(await response.aread())["error_code"])
                else:
                    async for event in sse_events(response):
                        if got.add(event):
                            break
        if events and events[0].event == "start":
            tally.message_ids.add(events[0].data["message_id"])
        why = sse_check(events)
        if why:
            tally.lost("sse", why, conversation_id=cid, events=[e.id for e in events][:50])
        elif events[-1].event == "error":
            tally.outcomes[("sse", "failed")] += 1
            tally.error("sse", events[-1].data["error_code"])
        else:
            tally.outcomes[("sse", events[-1].data["message"]["status"])] += 1
        tally.time(
            "sse", ttft=got.first - t0 if got.first else None, total=time.perf_counter() - t0
        )
        await pause(rng, think)


# --- REST search --------------------------------------------------------------------------
async def search_client(
    http: httpx.AsyncClient, tally: Tally, until: float, think: float, seed: int
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        t0 = time.perf_counter()
        res = await http.post("/api/search", json={"query": rng.choice(QUESTIONS), "top_k": 5})
        tally.asked["search"] += 1
        if res.status_code == 200 and res.json()["results"]:
            tally.outcomes[("search", "ok")] += 1
            tally.time("search", ttft=None, total=time.perf_counter() - t0)
        elif res.status_code == 200:
            tally.error("search", "no_results")
        else:
            tally.error("search", res.json().get("error_code", str(res.status_code)))
        await pause(rng, think)


# --- a notebook's socket while uploads run ------------------------------------------------
async def notebook_watch(
    base: str, http: httpx.AsyncClient, tally: Tally, until: float, every: float, seed: int
) -> dict[str, Any]:
    """Upload a small note every `every` s; each must reach `completed` on the socket."""
    rng = random.Random(seed)
    nb = (await http.post("/api/notebooks", json={"name": "soak uploads"})).json()["id"]
    connection = await websockets.connect(f"{base.replace('http', 'ws')}/ws/notebooks/{nb}")
    assert json.loads(await connection.recv())["type"] == "ready"
    final: dict[str, asyncio.Event] = {}
    status: dict[str, str] = {}
    progress: dict[str, int] = {}
    regressions = 0

    async def read() -> None:
        nonlocal regressions
        async for raw in connection:
            event = json.loads(raw)
            if event["type"] != "document_updated":
                continue
            doc = event["document_id"]
            if (event.get("progress") or 0) < progress.get(doc, 0):
                regressions += 1
            progress[doc] = max(progress.get(doc, 0), event.get("progress") or 0)
            if event["status"] in ("completed", "failed", "cancelled"):
                status[doc] = event["status"]
                final.setdefault(doc, asyncio.Event()).set()

    reader = asyncio.create_task(read())
    took: list[float] = []
    n = 0
    try:
        while time.monotonic() < until:
            n += 1
            topic = rng.choice(["osmosis", "tectonics", "entropy", "enzymes", "orbits"])
            text = f"# Soak note {n}\n\n" + f"Note {n} ({seed}) is about {topic}. " * 40
            t0 = time.perf_counter()
            res = await http.post(
                f"/api/notebooks/{nb}/documents",
                files=[("files", (f"note-{n}.md", text.encode()))],
            )
            tally.asked["upload"] += 1
            if res.status_code != 202:
                tally.error("upload", res.json().get("error_code", str(res.status_code)))
                continue
            doc = res.json()["documents"][0]["document_id"]
            with suppress(TimeoutError):
                await asyncio.wait_for(final.setdefault(doc, asyncio.Event()).wait(), 180)
            if doc in status:
                tally.outcomes[("upload", status[doc])] += 1
                took.append(time.perf_counter() - t0)
            else:
                stored = (await http.get(f"/api/documents/{doc}")).json()["status"]
                tally.lost("upload", "no final document_updated", document_id=doc, stored=stored)
            # Never past the end of the run (a large `every` means one upload only).
            rest = every - (time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, min(rest, until - time.monotonic())))
    finally:
        await connection.close()
        with suppress(websockets.ConnectionClosed):
            await reader
    tally.total["upload"] = took
    return {"notebook_id": nb, "progress_regressions": regressions}


# --- the server's memory -------------------------------------------------------------------
def server_pid(port: int) -> int:
    """The `studyrag serve --port <port>` this process started (harness.serve keeps it)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if stat[1] == me and b"serve" in args and str(port).encode() in args:
                return int(entry.name)
    raise RuntimeError(f"no studyrag serve on port {port} among this process's children")


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) in MB: anonymous memory is what a leak grows (the model is mmapped)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB), in MB per minute."""
    if len(points) < 3:
        return None
    fit = statistics.linear_regression([t for t, _ in points], [mb for _, mb in points])
    return round(fit.slope * 60, 3)


async def sample_memory(
    pid: int, every: float, stop: asyncio.Event, samples: list[list[float]]
) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        rss, anon = memory_mb(pid)
        samples.append(
            [round(time.monotonic() - t0, 1), round(rss, 1), round(anon, 1), os.getloadavg()[0]]
        )
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def memory_report(samples: list[list[float]], warmup: float) -> dict[str, Any]:
    """Slopes over the whole run, after the first `warmup` seconds (caches filling), and
    after the hub's answer retention: until then every answer's buffer is kept by design."""
    later = [s for s in samples if s[0] >= warmup]
    steady = [s for s in samples if s[0] >= RETENTION]
    return {
        "samples": samples,
        "columns": ["seconds", "rss_mb", "rss_anon_mb", "load_1min"],
        "rss_start_mb": samples[0][1],
        "rss_end_mb": samples[-1][1],
        "rss_max_mb": max(s[1] for s in samples),
        "rss_slope_mb_per_min": slope_per_minute([(s[0], s[1]) for s in samples]),
        "anon_slope_mb_per_min": slope_per_minute([(s[0], s[2]) for s in samples]),
        "warmup_seconds": warmup,
        "rss_slope_after_warmup_mb_per_min": slope_per_minute([(s[0], s[1]) for s in later]),
        "anon_slope_after_warmup_mb_per_min": slope_per_minute([(s[0], s[2]) for s in later]),
        "retention_seconds": RETENTION,
        "rss_slope_after_retention_mb_per_min": slope_per_minute([(s[0], s[1]) for s in steady]),
        "anon_slope_after_retention_mb_per_min": slope_per_minute([(s[0], s[2]) for s in steady]),
    }


# --- the run -------------------------------------------------------------------------------
async def stored_statuses(http: httpx.AsyncClient, cids: list[str]) -> Counter[str]:
    """Statuses of every stored answer of the soak's conversations."""
    counts: Counter[str] = Counter()
    for cid in cids:
        after = 0
        while True:
            page = (
                await http.get(
                    f"/api/chat/conversations/{cid}/messages",
                    params={"after_seq": after, "limit": 100},
                )
            ).json()
            for m in page["items"]:
                if m["role"] == "assistant":
                    counts[m["status"]] += 1
            if not page["items"] or not page["has_more_after"]:
                break
            after = page["items"][-1]["seq"]
    return counts


async def soak(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    n_ws = max(
        args.per_conversation, args.clients // 2 // args.per_conversation * args.per_conversation
    )
    n_sse = max(1, args.clients // 3)
    n_search = max(0, args.clients - n_ws - n_sse)
    tally = Tally()
    ws_base = base.replace("http", "ws")
    limits = httpx.Limits(max_connections=n_sse + n_search + 8)
    async with httpx.AsyncClient(base_url=base, timeout=ANSWER_TIMEOUT, limits=limits) as http:

        async def conversation() -> str:
            res = await http.post("/api/chat/conversations", json={"title": "soak"})
            return str(res.json()["id"])

        ws_cids = [await conversation() for _ in range(n_ws // args.per_conversation)]
        sse_cids = [await conversation() for _ in range(n_sse)]
        groups = [
            [ChatSocket(f"{ws_base}/ws/chat/{cid}", tally) for _ in range(args.per_conversation)]
            for cid in ws_cids
        ]
        for group in groups:
            for s in group:
                await s.connect()
        samples: list[list[float]] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_memory(pid, args.sample, stop, samples))
        started = time.monotonic()
        until = started + args.minutes * 60
        think = args.think
        clients: list[Coroutine[Any, Any, Any]] = [
            ws_conversation(group, tally, until, think=think, drop=args.ws_drop, seed=i)
            for i, group in enumerate(groups)
        ]
        clients += [
            sse_client(http, cid, tally, until, think=think, drop=args.sse_drop, seed=100 + i)
            for i, cid in enumerate(sse_cids)
        ]
        clients += [search_client(http, tally, until, think, seed=200 + i) for i in range(n_search)]
        # Last: its result (the notebook's figures) is read below.
        clients.append(notebook_watch(base, http, tally, until, args.upload_every, seed=300))
        tasks = [asyncio.create_task(client) for client in clients]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.monotonic() - started
        stop.set()
        await sampler
        crashed = [repr(r) for r in results if isinstance(r, BaseException)]
        for group in groups:
            for s in group:
                await s.aclose()
        stats = (await http.get("/api/chat/stats")).json()
        stored = await stored_statuses(http, ws_cids + sse_cids)
    notebook = results[-1] if isinstance(results[-1], dict) else {}
    return {
        "clients": {
            "websocket": n_ws,
            "websocket_conversations": len(groups),
            "sse": n_sse,
            "search": n_search,
            "notebook_watcher": 1,
        },
        "wall_seconds": round(wall, 1),
        "tally": tally,
        "crashed_clients": crashed,
        "notebook": notebook,
        "server_stats": {
            "generations": stats.get("generations"),
            "errors_by_code": stats.get("errors_by_code"),
            "websocket": {
                k: stats["websocket"][k] for k in ("connections", "slow_clients_dropped")
            },
        },
        "stored_answers": dict(stored),
        "memory": memory_report(samples, warmup=min(60.0, args.minutes * 60 / 4)),
    }


def report(run: dict[str, Any], log: Path, args: argparse.Namespace) -> dict[str, Any]:
    tally: Tally = run.pop("tally")
    kinds = sorted({k for k, _ in tally.outcomes} | set(tally.asked))
    by_kind = {
        kind: {
            "asked": tally.asked[kind],
            **{o: n for (k, o), n in sorted(tally.outcomes.items()) if k == kind},
        }
        for kind in kinds
    }
    answers = [k for k in ("ws", "sse") if k in by_kind]
    lost = sum(n for (k, o), n in tally.outcomes.items() if o == "lost")
    records = []
    for line in log.read_text(errors="replace").splitlines():
        with suppress(ValueError):  # the JSON log, and anything else written to stderr
            records.append(json.loads(line))
    levels = Counter(r.get("level") for r in records if isinstance(r, dict))
    warnings = [
        {k: r.get(k) for k in ("level", "logger", "message", "exception")}
        for r in records
        if isinstance(r, dict) and r.get("level") in ("WARNING", "ERROR", "CRITICAL")
    ]
    return {
        "config": {
            "minutes": args.minutes,
            "max_tokens": args.max_tokens,
            "think_seconds": args.think,
            "per_conversation": args.per_conversation,
            "sse_drop": args.sse_drop,
            "ws_drop": args.ws_drop,
            "upload_every_seconds": args.upload_every,
            "rate_limit_per_minute": args.rate_limit,
        },
        **{k: run[k] for k in ("clients", "wall_seconds")},
        "answers": {
            # Questions sent (WebSocket and SSE) and the answers the server started for them.
            "asked": sum(tally.asked[k] for k in answers),
            "started": len(tally.message_ids),
            "refused": sum(by_kind[k].get("refused", 0) for k in answers),
            # Per (client, answer): every socket of a conversation receives its answers.
            "deliveries": sum(
                by_kind[k].get(o, 0)
                for k in answers
                for o in ("complete", "incomplete", "failed", "lost")
            ),
            "received_complete": sum(by_kind[k].get("complete", 0) for k in answers),
            "received_incomplete": sum(by_kind[k].get("incomplete", 0) for k in answers),
            "failed": sum(by_kind[k].get("failed", 0) for k in answers),
            "lost": lost,
            "lost_detail": tally.lost_detail[:20],
        },
        "by_kind": by_kind,
        "errors_by_code": {f"{k}:{c}": n for (k, c), n in sorted(tally.errors.items())},
        "rate_limited": dict(tally.rate_limited),
        "latency": {
            kind: {
                "time_to_first_token": summary_ms(tally.ttft[kind]) if kind in tally.ttft else None,
                "total": summary_ms(tally.total.get(kind, [])),
            }
            for kind in sorted(set(tally.ttft) | set(tally.total))
        },
        **{k: run[k] for k in ("crashed_clients", "notebook", "server_stats", "stored_answers")},
        "server_log": {"levels": dict(levels), "warnings_and_errors": warnings[:20]},
        "memory": run["memory"],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--think", type=float, default=1.0, help="seconds between requests")
    parser.add_argument("--per-conversation", type=int, default=3)
    parser.add_argument("--sse-drop", type=float, default=0.8, help="share of SSE answers")
    parser.add_argument("--ws-drop", type=float, default=0.3, help="share of WebSocket answers")
    parser.add_argument("--upload-every", type=float, default=30.0)
    parser.add_argument("--rate-limit", type=int, default=1000, help="messages per minute")
    parser.add_argument("--sample", type=float, default=5.0, help="memory sample period, s")
    parser.add_argument("--result", default="soak", help="bench/results/<name>.json")
    args = parser.parse_args()
    work = CACHE / "soak"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "server.log"
    log.write_bytes(b"")
    env = {
        "STUDYRAG_LLM__MAX_TOKENS": str(args.max_tokens),
        "STUDYRAG_API__RATE_LIMIT_PER_MINUTE": str(args.rate_limit),
        "STUDYRAG_LOG__FORMAT": "json",  # one record per line: levels and tracebacks counted
    }
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="studyrag-soak-") as tmp:
        port = free_port()
        with serve(Path(tmp) / "data", port, log, env) as base:
            default = next(
                nb["id"]
                for nb in httpx.get(f"{base}/api/notebooks").json()["items"]
                if nb["is_default"]
            )
            upload(base, default, *sorted(write_corpus(Path(tmp) / "notes").iterdir()))
            run = asyncio.run(soak(base, server_pid(port), args))
    result = report(run, log, args)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    write_result(args.result, result)
    print(json.dumps({k: v for k, v in result.items() if k != "memory"}, indent=1))
    mem = result["memory"]
    print(
        f"RSS {mem['rss_start_mb']} → {mem['rss_end_mb']} MB, slope "
        f"{mem['rss_slope_mb_per_min']} MB/min ({mem['rss_slope_after_warmup_mb_per_min']} "
        f"after warm-up; anonymous {mem['anon_slope_after_warmup_mb_per_min']}; after the "
        f"answer retention {mem['rss_slope_after_retention_mb_per_min']}, anonymous "
        f"{mem['anon_slope_after_retention_mb_per_min']})"
    )
    return 1 if result["answers"]["lost"] or result["crashed_clients"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
