"""Fusion methods compared on the same candidate lists (the table in docs/performance.md).

Usage: python -m bench.fusion_variants   (after bench.retrieval_quality built bench/.cache)
Each query's semantic and lexical top 100 are fetched once through the real indexes; every
method then fuses the same two lists, so the differences are the fusion's alone.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, read_jsonl, write_result
from bench.retrieval_quality import ndcg_at_k
from studyrag.config import Settings
from studyrag.retrieval.hybrid import (
    fusion_weights,
    lexical_coverage,
    reciprocal_rank_fusion,
    score_fusion,
    sum_normalised,
)
from studyrag.retrieval.types import Candidate
from studyrag.services import open_services

CANDIDATES = 100
# (semantic, lexical, full-match score) -> chunk ids, best first
Method = Callable[[list[Candidate], list[Candidate], float | None], list[int]]


def _minmax(ranking: list[Candidate]) -> dict[int, float]:
    if not ranking:
        return {}
    hi, lo = ranking[0].score, min(c.score for c in ranking)
    return {c.chunk_id: (c.score - lo) / (hi - lo) if hi > lo else 1.0 for c in ranking}


def _zscore(ranking: list[Candidate]) -> dict[int, float]:
    if not ranking:
        return {}
    scores = [c.score for c in ranking]
    mu, sd = statistics.fmean(scores), statistics.pstdev(scores) or 1.0
    return {c.chunk_id: (c.score - mu) / sd for c in ranking}


def _combsum(
    norm: Callable[[list[Candidate]], dict[int, float]],
    weights: Callable[[list[Candidate], float | None], tuple[float, float]],
    *,
    mnz: bool = False,
) -> Method:
    def fuse(sem: list[Candidate], lex: list[Candidate], full: float | None) -> list[int]:
        ws, wl = weights(lex, full)
        ns, nl = norm(sem), norm(lex)
        # Missing from a list: at most that list's lowest.
        fs, fl = min(ns.values(), default=0.0), min(nl.values(), default=0.0)
        total = {
            c: (ws * ns.get(c, fs) + wl * nl.get(c, fl)) * ((c in ns) + (c in nl) if mnz else 1)
            for c in ns.keys() | nl.keys()
        }
        return sorted(total, key=lambda c: (-total[c], c))

    return fuse


def _equal(lex: list[Candidate], full: float | None) -> tuple[float, float]:
    return 1.0, 1.0


def _lexical_times_coverage(lex: list[Candidate], full: float | None) -> tuple[float, float]:
    return 1.0, lexical_coverage(lex, full)


def _half_coverage(lex: list[Candidate], full: float | None) -> tuple[float, float]:
    w = fusion_weights(lex, full)
    return w["semantic"], w["lexical"]


def _rrf(sem: list[Candidate], lex: list[Candidate], full: float | None) -> list[int]:
    fused = reciprocal_rank_fusion({"semantic": sem, "lexical": lex}, weights={}, k=60)
    return [c for c, _, _ in fused]


def _dense_first(sem: list[Candidate], lex: list[Candidate], full: float | None) -> list[int]:
    # Semantic order (cosine to 2 decimals), lexical rank breaking ties, lexical-only after.
    lex_rank = {c.chunk_id: r for r, c in enumerate(lex)}
    ordered = sorted(sem, key=lambda c: (-round(c.score, 2), lex_rank.get(c.chunk_id, 1 << 30)))
    seen = {c.chunk_id for c in sem}
    return [c.chunk_id for c in ordered] + [c.chunk_id for c in lex if c.chunk_id not in seen]


def _chosen(sem: list[Candidate], lex: list[Candidate], full: float | None) -> list[int]:
    fused = score_fusion({"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, full))
    return [c for c, _, _ in fused]


METHODS: dict[str, Method] = {
    "lexical only": lambda sem, lex, full: [c.chunk_id for c in lex],
    "semantic only": lambda sem, lex, full: [c.chunk_id for c in sem],
    "RRF k=60, equal weights (before)": _rrf,
    "dense first, lexical tie-break": _dense_first,
    "CombSUM min-max, equal": _combsum(_minmax, _equal),
    "CombMNZ min-max, equal": _combsum(_minmax, _equal, mnz=True),
    "CombSUM z-score, equal": _combsum(_zscore, _equal),
    "CombSUM sum-norm, equal": _combsum(sum_normalised, _equal),
    "CombSUM z-score, lexical x coverage": _combsum(_zscore, _lexical_times_coverage),
    "CombSUM sum-norm, lexical x coverage": _combsum(sum_normalised, _lexical_times_coverage),
    "CombSUM min-max, share = coverage/2": _combsum(_minmax, _half_coverage),
    "CombSUM z-score, share = coverage/2": _combsum(_zscore, _half_coverage),
    "CombSUM sum-norm, share = coverage/2 (chosen)": _chosen,
}


async def _lists(name: str, queries: list[str]) -> tuple[list[Any], dict[int, tuple[str, Any]]]:
    """Both candidate lists per query, and each candidate's (file stem, page)."""
    async with open_services(Settings(data_dir=CACHE / name / "data")) as services:
        search = services.search
        out = []
        for query in queries:
            sem = await search.semantic.search(query, top_k=CANDIDATES)
            lex = await search.lexical.rank(query, top_k=CANDIDATES)
            out.append((sem, lex.candidates, lex.full_match))
        ids = {c.chunk_id for sem, lex, _ in out for c in sem + lex}
        rows = await search.repo.searchable_chunks(ids)
    where = {cid: (Path(doc.filename).stem, chunk.page) for cid, (chunk, doc) in rows.items()}
    return out, where


async def main() -> None:
    for name in ("scifact", "financebench"):
        if not (CACHE / name / "ready").exists():
            raise SystemExit(f"bench/.cache/{name} is missing: run bench.retrieval_quality first")
    root = DATA / "scifact-train"
    texts = {q["_id"]: q["text"] for q in read_jsonl(root / "queries.jsonl")}
    qrels: dict[str, set[str]] = defaultdict(set)
    for line in (root / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, cid, score = line.split("\t")
        if int(score) > 0:
            qrels[qid].add(cid)
    qids = [q for q in qrels if q in texts]
    sf_lists, sf_where = await _lists("scifact", [texts[q] for q in qids])
    questions = read_jsonl(DATA / "financebench-dev" / "questions.jsonl")
    fb_lists, fb_where = await _lists("financebench", [q["question"] for q in questions])
    # Zero-based in the data set, one-based in StudyRAG.
    golds = [
        {(e["doc_name"], e["evidence_page_num"] + 1) for e in q["evidence"]} for q in questions
    ]

    table: dict[str, Any] = {}
    for label, method in METHODS.items():
        ndcg = statistics.fmean(
            ndcg_at_k(
                list(dict.fromkeys(sf_where[c][0] for c in method(*lists) if c in sf_where)),
                qrels[qid],
            )
            for qid, lists in zip(qids, sf_lists, strict=True)
        )
        firsts = []
        for gold, lists in zip(golds, fb_lists, strict=True):
            got = [fb_where[c] for c in method(*lists) if c in fb_where][:10]
            firsts.append(next((i for i, g in enumerate(got) if g in gold), None))
        row = {"scifact_ndcg@10": round(ndcg, 4)}
        for k in (1, 5, 10):
            hits = sum(1 for f in firsts if f is not None and f < k)
            row[f"financebench_page_recall@{k}"] = round(hits / len(firsts), 4)
        row["financebench_mrr@10"] = round(
            statistics.fmean(1 / (f + 1) if f is not None else 0.0 for f in firsts), 4
        )
        table[label] = row
        print(f"{label:46s} {row}")
    write_result(
        "fusion_variants",
        {"candidates_per_list": CANDIDATES, "queries": len(qids), "questions": len(questions),
         "methods": table},
    )  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
