"""Answer fan-out through nginx: one worker against two behind deploy/nginx.conf, in one run;
then one real `studyrag serve` behind the same nginx.conf, WebSocket and SSE through it.

Usage: python -m bench.fanout_lb [--clients 400] [--conversations 40] [--tokens 100]
                                 [--rate 10] [--rounds 3] [--redis redis://127.0.0.1:6379/0]
                                 [--skip-e2e | --e2e-only]

nginx runs deploy/nginx.conf with only what a machine needs changed (crossplane: the upstream
servers and the listen address templated to local ports, pid/log/temp paths in a temporary
directory, one nginx worker process); every location is the file's own, so the run also
proves them for WebSocket and SSE. nginx is not a dependency of StudyRAG: without it
(`apt-get install -y nginx`) this bench says so and stops.

Fan-out configurations, the same clients and the same offered load, all on Redis:

- `direct-1`: one worker, clients connect to it (what bench/fanout.py calls redis-1);
- `lb-1`: one worker behind nginx;
- `lb-2`: two workers behind nginx (least_conn, no sticky sessions): conversation i's answer
  runs on worker i % 2, a client lands on whichever worker nginx picks, so about half of every
  answer's clients are served from the other worker's mirror of the answer's stream.

Workers are bench/fanout.py's: real uvicorn processes with the production chat transport
(GenerationHub, WebSocketManager, /ws/chat); only the engine is synthetic (paced tokens
stamped with the wall clock). Workers on the first CPU; nginx and the clients on the other.

The end-to-end part starts a real `studyrag serve` (MiniLM, SmolLM2 through llama.cpp,
SQLite, in-process broker) behind nginx and checks, through nginx only: /health; Host passed
through (a name outside STUDYRAG_API__ALLOWED_HOSTS is 421, the allowed one with its port is
served); one answer as SSE arriving event by event (not buffered to the end); the same
answer resumed with Last-Event-ID; one answer over a WebSocket opened with the page's Origin
(the public name with nginx's port: what `$http_host` keeps and `$host` would lose).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import crossplane
import httpx
import websockets

from bench.common import ROOT, wait_for_port, write_result
from bench.fanout import run_clients
from bench.ws_fanout import cpu_seconds, free_port, pin, raise_fd_limit

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
CONFIGS = {"direct-1": (1, False), "lb-1": (1, True), "lb-2": (2, True)}
PUBLIC_NAME = "study.example.test"


# --- nginx, templated from deploy/nginx.conf ----------------------------------------------
def _walk(block: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    for item in block:
        if item["directive"] == name:
            yield item
        yield from _walk(item.get("block", []), name)


def render_conf(listen: int, upstreams: list[int], tmp: Path) -> str:
    """deploy/nginx.conf with local ports and paths; every location left as it is."""
    parsed = crossplane.parse(str(NGINX_CONF), single=True, comments=False)
    if parsed["status"] != "ok":
        raise RuntimeError(f"deploy/nginx.conf does not parse: {parsed['errors']}")
    main: list[dict[str, Any]] = parsed["config"][0]["parsed"]
    for item in _walk(main, "worker_processes"):
        item["args"] = ["1"]  # one core for nginx and the clients on this machine
    main[:0] = [
        {"directive": "daemon", "args": ["off"]},
        {"directive": "pid", "args": [str(tmp / "nginx.pid")]},
        {"directive": "error_log", "args": [str(tmp / "error.log"), "warn"]},
    ]
    (http,) = _walk(main, "http")
    body = http["block"]
    for item in list(_walk(body, "include")):
        if not Path(item["args"][0]).exists():
            body.remove(item)
    body[:0] = [
        {"directive": "access_log", "args": ["off"]},
        *(
            {"directive": f"{kind}_temp_path", "args": [str(tmp / kind)]}
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
    ]
    (upstream,) = _walk(body, "upstream")
    template = next(d for d in upstream["block"] if d["directive"] == "server")
    others = [d for d in upstream["block"] if d["directive"] != "server"]
    servers = [
        {"directive": "server", "args": [f"127.0.0.1:{port}", *template["args"][1:]]}
        for port in upstreams
    ]
    upstream["block"] = [*others[:1], *servers, *others[1:]]
    for item in _walk(body, "listen"):
        item["args"] = [f"127.0.0.1:{listen}"]
    return str(crossplane.build(main))


@contextmanager
def running_nginx(upstreams: list[int]) -> Iterator[tuple[int, list[int]]]:
    """(port, pids of nginx's processes) of a local nginx running deploy/nginx.conf."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not exe:
        raise SystemExit("nginx is not installed: `apt-get install -y nginx` to run this bench")
    with tempfile.TemporaryDirectory(prefix="studyrag-nginx-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx's worker processes (user nobody) use the temp paths
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(render_conf(port, upstreams, tmp))
        check = subprocess.run(
            [exe, "-t", "-p", str(tmp), "-c", str(conf)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the templated deploy/nginx.conf:\n{check.stderr}")
        proc = subprocess.Popen([exe, "-p", str(tmp), "-c", str(conf)])
        try:
            wait_for_port(port, proc, "nginx")
            pids = [proc.pid, *_children(proc.pid)]
            for pid in pids:
                pin(pid, client=True)
            yield port, pids
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# --- fan-out ------------------------------------------------------------------------------
def measure(name: str, args: argparse.Namespace, cids: list[str]) -> dict[str, Any]:
    workers, behind_nginx = CONFIGS[name]
    namespace = f"bench-lb-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        ports = [free_port() for _ in range(workers)]
        procs = []
        for k, port in enumerate(ports):
            cmd = [
                sys.executable, "-m", "bench.fanout", "--serve", "--port", str(port),
                "--broker", "redis", "--redis", args.redis, "--namespace", namespace,
                "--worker", str(k), "--workers", str(workers), "--ready", str(ready),
                "--clients", str(args.clients), "--conversations", str(args.conversations),
                "--tokens", str(args.tokens), "--rate", str(args.rate),
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=ROOT)
            pin(proc.pid, client=False)
            procs.append(proc)
        try:
            for port, proc in zip(ports, procs, strict=True):
                wait_for_port(port, proc, f"worker of {name}")
            per = args.clients // args.conversations
            worker_pids = [p.pid for p in procs]
            if behind_nginx:
                with running_nginx(ports) as (lb_port, lb_pids):
                    lb0 = sum(cpu_seconds(p) for p in lb_pids)
                    result = asyncio.run(run_clients([lb_port], worker_pids, cids, per, ready))
                    lb_cpu = sum(cpu_seconds(p) for p in lb_pids) - lb0
                result["nginx_cpu_us_per_frame"] = round(
                    1e6 * lb_cpu / max(result["frames_received"], 1), 2
                )
            else:
                result = asyncio.run(run_clients(ports, worker_pids, cids, per, ready))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    expected = args.clients * args.tokens
    result["frames_expected"] = expected
    print(f"{name:9s} {result}", flush=True)
    if result["frames_received"] != expected:
        raise RuntimeError(f"{name}: {result['frames_received']} of {expected} frames arrived")
    return result


# --- one real `studyrag serve` behind nginx -------------------------------------------------
async def through_nginx(lb: int) -> dict[str, Any]:
    from tests.api.conftest import NOTES, WSClient, sse_events

    base = f"http://127.0.0.1:{lb}"
    public = f"{PUBLIC_NAME}:{lb}"
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=300, headers={"Host": public}) as http:
        health = await http.get("/health")
        assert health.status_code == 200, health.text
        foreign = await http.get("/health", headers={"Host": f"elsewhere.test:{lb}"})
        assert foreign.status_code == 421, foreign.text  # nginx passed the Host through
        out["host_checked_through_nginx"] = True
        done = await http.post(
            "/api/documents", files={"file": ("plants.md", NOTES.encode(), "text/markdown")}
        )
        assert done.status_code == 201 and done.json()["status"] == "completed", done.text
        cid = (await http.post("/api/chat/conversations", json={})).json()["id"]
        body = {"message": "Explain how photosynthesis works.", "max_tokens": 96}
        events, arrivals = [], []
        t0 = time.perf_counter()
        async with http.stream("POST", f"/api/chat/stream/{cid}", json=body) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in sse_events(response):
                events.append(event)
                arrivals.append(time.perf_counter() - t0)
        tokens = [t for e, t in zip(events, arrivals, strict=True) if e.event == "token"]
        assert events[0].event == "start" and events[-1].event == "done", events[-1]
        assert len(tokens) >= 8, f"only {len(tokens)} tokens"
        # Not buffered: tokens arrive one by one as the model makes them (a buffering proxy
        # hands them over in a few bursts of kilobytes), over the generation's time.
        gaps = [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
        bursts = 1 + sum(gap > 0.002 for gap in gaps)
        assert bursts >= len(tokens) / 3, f"tokens came in {bursts} bursts: buffered?"
        out["sse"] = {
            "events": len(events),
            "tokens": len(tokens),
            "token_arrival_bursts": bursts,
            "first_token_s": round(tokens[0], 3),
            "last_token_s": round(tokens[-1], 3),
            "median_token_gap_ms": round(1000 * statistics.median(gaps), 2),
            "done_s": round(arrivals[-1], 3),
        }
        # Resume through nginx: everything after event 3, then nothing twice.
        after = events[2].id
        async with http.stream(
            "GET", f"/api/chat/stream/{cid}", headers={"Last-Event-ID": str(after)}
        ) as response:
            rest = [e async for e in sse_events(response)]
        assert [e.id for e in rest] == [e.id for e in events[3:]], "resume through nginx"
        out["sse_resume_events"] = len(rest)
        cid2 = (await http.post("/api/chat/conversations", json={})).json()["id"]
    # The browser's own Origin, with nginx's port: the page's WebSocket is accepted.
    # The URI's name goes into Host; the socket goes to nginx on 127.0.0.1.
    async with websockets.connect(
        f"ws://{public}/ws/chat/{cid2}",
        host="127.0.0.1",
        port=lb,
        origin=f"http://{public}",  # type: ignore[arg-type]
    ) as connection:
        client = WSClient(connection)
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        await client.send({"type": "message", "content": "What does chlorophyll absorb?",
                           "max_tokens": 32})  # fmt: skip
        frames = await client.stream()
    chunks = [f for f in frames if f["type"] == "stream_chunk"]
    assert frames[-1]["type"] == "stream_end", frames[-1]
    assert [f["seq"] for f in chunks] == list(range(1, len(chunks) + 1)) and chunks
    out["ws"] = {"chunks": len(chunks), "status": frames[-1]["message"]["status"]}
    return out


def e2e() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "STUDYRAG_LLM__PROVIDER": "llamacpp",
        "STUDYRAG_LLM__N_THREADS": "1",
        "STUDYRAG_CHAT__REWRITE_FOLLOWUPS": "false",
        "STUDYRAG_API__ALLOWED_HOSTS": f'["{PUBLIC_NAME}"]',
        "STUDYRAG_API__TRUSTED_PROXIES": '["127.0.0.1"]',
    }
    exe = str(Path(sys.executable).with_name("studyrag"))
    with tempfile.TemporaryDirectory(prefix="studyrag-lb-e2e-") as tmp:
        port = free_port()
        log = Path(tmp) / "serve.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [exe, "serve", "--port", str(port), "--data-dir", str(Path(tmp) / "data")],
                stdout=fh, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-3000:])
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("studyrag serve did not start")
                time.sleep(0.3)
            with running_nginx([port]) as (lb, _):
                result = asyncio.run(through_nginx(lb))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"e2e through nginx: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="tokens/s per answer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--e2e-only", action="store_true", help="only the real-server check")
    args = parser.parse_args()
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("nginx is not installed (apt-get install -y nginx): bench skipped", flush=True)
        return
    if args.e2e_only:
        e2e()
        return
    raise_fd_limit(args.clients * 4 + 256)
    pin(os.getpid(), client=True)
    load_before = os.getloadavg()
    cids = [f"c{i:04d}" for i in range(args.conversations)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            runs[name].append(measure(name, args, cids))
    load_after = os.getloadavg()

    def med(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[name]))

    keys = ("p50_ms", "p99_ms", "frames_per_second", "worker_cpu_us_per_frame")
    median = {name: {k: med(name, k) for k in keys} for name in runs}
    for name in ("lb-1", "lb-2"):
        median[name]["nginx_cpu_us_per_frame"] = med(name, "nginx_cpu_us_per_frame")

    def ratio(a: str, b: str, key: str) -> float:
        return round(median[a][key] / median[b][key], 3)

    # Ratios per round too: rounds run under different loads from other work.
    per_round = [
        {
            "p99": round(runs["lb-2"][i]["p99_ms"] / runs["lb-1"][i]["p99_ms"], 3),
            "frames_per_second": round(
                runs["lb-2"][i]["frames_per_second"] / runs["lb-1"][i]["frames_per_second"], 3
            ),
        }
        for i in range(args.rounds)
    ]
    result: dict[str, Any] = {
        "clients": args.clients,
        "conversations": args.conversations,
        "tokens_per_answer": args.tokens,
        "rate_per_answer": args.rate,
        "offered_frames_per_second": args.rate * args.clients,
        "cpus": len(os.sched_getaffinity(0)),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "runs": runs,
        "median": median,
        "two_over_one_worker_behind_nginx": {
            "p50": ratio("lb-2", "lb-1", "p50_ms"),
            "p99": ratio("lb-2", "lb-1", "p99_ms"),
            "frames_per_second": ratio("lb-2", "lb-1", "frames_per_second"),
            "worker_cpu_per_frame": ratio("lb-2", "lb-1", "worker_cpu_us_per_frame"),
            "per_round": per_round,
        },
        "nginx_over_direct_one_worker": {
            "p50": ratio("lb-1", "direct-1", "p50_ms"),
            "p99": ratio("lb-1", "direct-1", "p99_ms"),
            "frames_per_second": ratio("lb-1", "direct-1", "frames_per_second"),
        },
    }
    if not args.skip_e2e:
        result["e2e_through_nginx"] = e2e()
    write_result("fanout_lb", result)


if __name__ == "__main__":
    main()
