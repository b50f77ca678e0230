"""Retrieval quality per mode: SciFact nDCG@10 / recall@100, FinanceBench evidence-page recall@5.

Usage: python -m bench.retrieval_quality [--scifact-limit N] [--skip-financebench|--skip-scifact]
    [--financebench-dir PATH]
A skipped set keeps its figures from the previous results file (marked as not re-run).
`--financebench-dir` keeps the ingested filings where bench.answers and
bench.financebench_methods find them too (`STUDYRAG_BENCH_ANSWERS_DIR` / `--library`): the
data dir is PATH/data, and PATH/ready records the ingestion once it completed.
Documents go through the real pipeline (SciFact abstracts as Markdown files: title heading +
abstract; FinanceBench filings as the original PDFs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, RESULTS, read_jsonl, write_result
from studyrag.config import Settings
from studyrag.services import Services, open_services

MODES = ("lexical", "semantic", "hybrid")


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def _ready_info(work: Path) -> dict[str, Any]:
    """What the `ready` marker of an ingested library says (older markers hold just "ok")."""
    try:
        info = json.loads((work / "ready").read_text())
    except ValueError:
        return {"reused": True}
    return {**info, "reused": True} if isinstance(info, dict) else {"reused": True}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _ingest_folder(services: Services, folder: Path) -> dict[str, Any]:
    t = time.perf_counter()
    results = await services.pipeline.ingest_paths([folder])
    return {
        "files": len(results),
        "failed": sum(1 for r in results if not r.ok),
        "chunks": sum(r.chunks for r in results),
        "seconds": round(time.perf_counter() - t, 1),
    }


async def scifact(limit: int | None) -> dict[str, Any]:
    root = DATA / "scifact-train"
    corpus = read_jsonl(root / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(root / "queries.jsonl")}
    qrels: dict[str, set[str]] = defaultdict(set)
    for line in (root / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, cid, score = line.split("\t")
        if int(score) > 0:
            qrels[qid].add(cid)
    work = CACHE / "scifact"
    docs_dir = work / "docs"
    if not (work / "ready").exists():
        shutil.rmtree(work, ignore_errors=True)
        docs_dir.mkdir(parents=True)
        for doc in corpus:
            title = " ".join(doc["title"].split()) or doc["_id"]
            (docs_dir / f"{doc['_id']}.md").write_text(f"# {title}\n\n{doc['text']}\n")
    settings = Settings(data_dir=work / "data")
    out: dict[str, Any] = {"corpus_docs": len(corpus), "measured": _now()}
    async with open_services(settings) as services:
        if not (work / "ready").exists():
            out["ingest"] = await _ingest_folder(services, docs_dir)
            (work / "ready").write_text("ok")
        qids = [q for q in qrels if q in queries][: limit or None]
        out["queries"] = len(qids)
        for mode in MODES:
            ndcgs, recalls, lat = [], [], []
            for qid in qids:
                t = time.perf_counter()
                resp = await services.search.search(queries[qid], mode=mode, top_k=100)
                lat.append(time.perf_counter() - t)
                ranked = list(dict.fromkeys(Path(r.filename).stem for r in resp.results))
                ndcgs.append(ndcg_at_k(ranked, qrels[qid]))
                recalls.append(recall_at_k(ranked, qrels[qid], 100))
            out[mode] = {
                "ndcg@10": round(sum(ndcgs) / len(ndcgs), 4),
                "recall@100": round(sum(recalls) / len(recalls), 4),
                "mean_latency_ms": round(1000 * sum(lat) / len(lat), 2),
            }
            print(f"scifact {mode}: {out[mode]}")
    return out


async def financebench(work: Path) -> dict[str, Any]:
    root = DATA / "financebench-dev"
    questions = read_jsonl(root / "questions.jsonl")
    settings = Settings(data_dir=work / "data")
    out: dict[str, Any] = {"questions": len(questions), "measured": _now(), "library": str(work)}
    async with open_services(settings) as services:
        if (work / "ready").exists():
            out["ingest"] = _ready_info(work)
        else:
            out["ingest"] = await _ingest_folder(services, root / "pdfs")
            if out["ingest"]["failed"]:
                raise SystemExit(f"ingestion failed: {out['ingest']}")
            # The same marker bench.answers writes: it reuses this library as it is.
            (work / "ready").write_text(json.dumps(out["ingest"]))
        out["chunks"] = await services.vectors.count()
        for mode in MODES:
            hits = {1: 0, 5: 0, 10: 0}
            # Rank (1-10) of the first result on a gold page, per question; None = not in 10.
            first_gold: dict[str, int | None] = {}
            lat = []
            for q in questions:
                # Zero-based in the data set, one-based in StudyRAG.
                gold = {(e["doc_name"], e["evidence_page_num"] + 1) for e in q["evidence"]}
                t = time.perf_counter()
                resp = await services.search.search(q["question"], mode=mode, top_k=10)
                lat.append(time.perf_counter() - t)
                got = [(Path(r.filename).stem, r.page) for r in resp.results]
                first_gold[q["financebench_id"]] = next(
                    (i + 1 for i, g in enumerate(got) if g in gold), None
                )
                for k in hits:
                    if any(g in gold for g in got[:k]):
                        hits[k] += 1
            out[mode] = {f"page_recall@{k}": round(v / len(questions), 4) for k, v in hits.items()}
            out[mode]["mean_latency_ms"] = round(1000 * sum(lat) / len(lat), 2)
            print(f"financebench {mode}: {out[mode]}")
            out[mode]["first_gold_rank"] = first_gold
    return out


async def main(args: argparse.Namespace) -> None:
    previous_path = RESULTS / "retrieval_quality.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    result: dict[str, Any] = {}
    for key, skip, run in (
        ("scifact_train", args.skip_scifact, lambda: scifact(args.scifact_limit)),
        ("financebench_dev", args.skip_financebench, lambda: financebench(args.financebench_dir)),
    ):
        if not skip:
            result[key] = await run()
        elif key in previous:
            when = previous[key].get("measured", previous.get("machine", {}).get("when"))
            result[key] = {**previous[key], "measured": when, "not_re_run": True}
    result["reference"] = {
        "scifact_test_bm25_ndcg@10_published": 0.665,
        "note": "published BM25 is on the SciFact test split; ours is the train split",
    }
    write_result("retrieval_quality", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--scifact-limit", type=int, default=None)
    parser.add_argument("--skip-financebench", action="store_true")
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--financebench-dir", type=Path, default=CACHE / "financebench")
    asyncio.run(main(parser.parse_args()))
