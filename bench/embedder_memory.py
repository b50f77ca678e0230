"""Native memory of query encoding: batches padded to a multiple of 32 tokens against unpadded.

Usage: python -m bench.embedder_memory [--calls 1500] [--seed 1]

Runs two processes side by side (the same machine noise for both), each encoding the same
`--calls` batches through `SentenceTransformersEmbedder.embed_queries` (the product's query
path: its thread, its lock, its model view), one with the shipped bucketed padding and one
with it switched off. A batch is what chat and search send: 1-12 texts, SciFact queries and
sentences of SciFact abstracts (answer sentences and source sentences in attribution).
RSS is read after `malloc_trim(0)` (so glibc's free lists do not count) every tenth of the
run; the slope is a least-squares fit over the second half, after warm-up. Also the median
wall time of a call in each process, and single SciFact queries' p50 with and without
padding, alternated in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import time

from bench.common import DATA, read_jsonl, write_result


def _texts() -> list[str]:
    queries = [q["text"] for q in read_jsonl(DATA / "scifact-train" / "queries.jsonl")]
    sentences: list[str] = []
    for i, doc in enumerate(read_jsonl(DATA / "scifact-train" / "corpus.jsonl")):
        if i >= 1500:
            break
        sentences += [s for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if len(s) > 20]
    return queries + sentences


def _slope(points: list[tuple[float, float]]) -> float:
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def _child(padded: bool, calls: int, seed: int) -> dict[str, object]:
    from studyrag.backends.embeddings import sentence_transformers as st
    from studyrag.config import EmbeddingsSettings
    from studyrag.observability.memory import release_freed_memory, resident_memory

    if not padded:
        st._PADDING = {}
    embedder = st.SentenceTransformersEmbedder(EmbeddingsSettings())
    await embedder.start()
    texts = _texts()
    rng = random.Random(seed)
    batches = [rng.sample(texts, rng.randint(1, 12)) for _ in range(calls + 50)]
    for batch in batches[:50]:  # warm-up, not measured
        await embedder.embed_queries(batch)

    def rss_mb() -> float:
        release_freed_memory()
        return resident_memory() / 1e6

    base = rss_mb()
    times: list[float] = []
    points: list[tuple[float, float]] = []
    step = max(1, calls // 10)
    for i, batch in enumerate(batches[50:], start=1):
        t = time.perf_counter()
        await embedder.embed_queries(batch)
        times.append(time.perf_counter() - t)
        if i % step == 0:
            points.append((i, rss_mb() - base))
    half = points[len(points) // 2 :]
    latency: dict[str, float] = {}
    if padded:  # single queries, padded and unpadded alternately, in this one process
        single: dict[str, list[float]] = {"padded": [], "unpadded": []}
        shipped = st._PADDING
        queries = [q["text"] for q in read_jsonl(DATA / "scifact-train" / "queries.jsonl")]
        for i, q in enumerate(queries[:400]):
            name = "padded" if i % 2 == 0 else "unpadded"
            st._PADDING = shipped if name == "padded" else {}
            t = time.perf_counter()
            await embedder.embed_query(q)
            single[name].append(time.perf_counter() - t)
        st._PADDING = shipped
        latency = {
            f"single_query_{k}_p50_ms": round(1000 * statistics.median(v), 2)
            for k, v in single.items()
        }
    await embedder.aclose()
    return {
        **latency,
        "padded": padded,
        "calls": calls,
        "rss_base_mb": round(base, 1),
        "rss_growth_mb_per_tenth": [round(y, 1) for _, y in points],
        "slope_second_half_kb_per_call": round(1000 * _slope(half), 2),
        "call_median_ms": round(1000 * statistics.median(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", choices=["padded", "unpadded"])
    args = parser.parse_args()
    if args.child:
        out = asyncio.run(_child(args.child == "padded", args.calls, args.seed))
        print(json.dumps(out))
        return
    cmd = [sys.executable, "-m", "bench.embedder_memory", "--calls", str(args.calls)]
    cmd += ["--seed", str(args.seed)]
    procs = {
        name: subprocess.Popen([*cmd, "--child", name], stdout=subprocess.PIPE, text=True)
        for name in ("padded", "unpadded")
    }
    runs = {}
    for name, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name} run failed with exit code {proc.returncode}")
        runs[name] = json.loads(stdout.strip().splitlines()[-1])
        print(name, runs[name])
    write_result("embedder_memory", {"runs": runs})


if __name__ == "__main__":
    main()
