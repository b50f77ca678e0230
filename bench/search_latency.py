"""Hybrid search latency at 10k and 100k chunks, query embedding included.

Usage: python -m bench.search_latency [--sizes 10000 100000] [--queries 200]
Passages are SciFact sentence windows (1–3 sentences), embedded for real with MiniLM (cached
in bench/.cache), stored through DocumentRepo + the Chroma store like ingested chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, DATA, read_jsonl, summary_ms, write_result
from studyrag.config import Settings
from studyrag.db.repo import COMPLETED
from studyrag.services import open_services

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def passages(limit: int) -> list[tuple[str, str, str]]:
    """(doc id, title, passage) — sentence windows of 1, 2 and 3 sentences."""
    out: list[tuple[str, str, str]] = []
    corpus = read_jsonl(DATA / "scifact-train" / "corpus.jsonl")
    for width in (1, 2, 3):
        for doc in corpus:
            sents = [s for s in _SENT.split(doc["text"]) if s.strip()]
            for i in range(0, max(1, len(sents) - width + 1)):
                out.append((doc["_id"], doc["title"], " ".join(sents[i : i + width])))
                if len(out) >= limit:
                    return out
    return out


async def embeddings_for(texts: list[str], embedder: Any) -> np.ndarray:
    cache = CACHE / f"latency-vectors-{len(texts)}.npy"
    if cache.exists():
        return np.load(cache)
    vecs = []
    t = time.perf_counter()
    for i in range(0, len(texts), 512):
        vecs.extend(await embedder.embed_documents(texts[i : i + 512]))
        if i % 10240 == 0:
            print(f"  embedded {i}/{len(texts)} ({time.perf_counter() - t:.0f}s)")
    arr = np.asarray(vecs, dtype=np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, arr)
    return arr


async def build_index(size: int, rows: list[tuple[str, str, str]], vecs: np.ndarray) -> Path:
    work = CACHE / f"latency-{size}"
    if (work / "ready").exists():
        return work
    shutil.rmtree(work, ignore_errors=True)
    async with open_services(Settings(data_dir=work)) as services:
        repo = services.documents
        by_doc: dict[str, list[int]] = {}
        for i, (doc_id, _, _) in enumerate(rows[:size]):
            by_doc.setdefault(doc_id, []).append(i)
        for doc_id, idxs in by_doc.items():
            doc = await repo.create(
                filename=f"{doc_id}.md",
                file_type="md",
                sha256=doc_id,
                status=COMPLETED,
                meta={"title": rows[idxs[0]][1]},
            )
            ids = await repo.insert_chunks(
                doc.id,
                [
                    {
                        "index": n,
                        "text": rows[i][2],
                        "start_char": 0,
                        "end_char": len(rows[i][2]),
                        "page": None,
                        "section": rows[i][1],
                        "token_count": 0,
                    }
                    for n, i in enumerate(idxs)
                ],
            )
            await services.vectors.upsert(
                [str(c) for c in ids],
                [vecs[i].tolist() for i in idxs],
                [{"document_id": doc.id, "file_type": "md"} for _ in idxs],
            )
            await repo.set_status(doc.id, COMPLETED, chunk_count=len(ids))
    (work / "ready").write_text("ok")
    return work


async def measure(work: Path, queries: list[str], warm_up: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with open_services(Settings(data_dir=work)) as services:
        out["chunks"] = await services.vectors.count()
        # Other queries than the measured ones: warm SQLite pages and code paths, but not
        # the lexical index's per-term counts for the measured queries' own terms.
        for q in warm_up:
            await services.search.search(q, mode="hybrid", top_k=10)
        # Hybrid first: its lexical half meets every query's terms for the first time (the
        # lexical mode after it reuses the per-term document counts hybrid cached).
        for mode in ("hybrid", "semantic", "lexical"):
            samples = []
            for q in queries:
                t = time.perf_counter()
                await services.search.search(q, mode=mode, top_k=10)
                samples.append(time.perf_counter() - t)
            out[mode] = summary_ms(samples)
            print(f"  {out['chunks']} chunks {mode}: {out[mode]}")
        t_embed = []
        for q in queries:
            t = time.perf_counter()
            await services.embedder.embed_query(q)
            t_embed.append(time.perf_counter() - t)
        out["query_embedding"] = summary_ms(t_embed)
    return out


async def main(args: argparse.Namespace) -> None:
    from studyrag.backends.embeddings.sentence_transformers import SentenceTransformersEmbedder
    from studyrag.config import EmbeddingsSettings

    top = max(args.sizes)
    rows = passages(top)
    embedder = SentenceTransformersEmbedder(EmbeddingsSettings())
    await embedder.start()
    vecs = await embeddings_for([f"{t}\n{p}" for _, t, p in rows], embedder)
    queries = [q["text"] for q in read_jsonl(DATA / "scifact-train" / "queries.jsonl")]
    queries, warm_up = queries[: args.queries], queries[args.queries : args.queries + 20]
    result: dict[str, Any] = {"target": "hybrid p50 <= 30 ms at 100k chunks", "sizes": {}}
    for size in args.sizes:
        work = await build_index(size, rows, vecs)
        result["sizes"][str(size)] = await measure(work, queries, warm_up)
    write_result("search_latency", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
