"""Hybrid search beats lexical and semantic alone on a small built-in query set."""

from __future__ import annotations

from pathlib import Path

import pytest

from studyrag.config import Settings
from studyrag.services import open_services
from tests.e2e.hybrid_queries import DOCS, QUERIES

pytestmark = pytest.mark.slow


async def test_hybrid_beats_each_mode_alone(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, body in DOCS.items():
        (folder / f"{name}.txt").write_text(body, encoding="utf-8")
    mrr: dict[str, float] = {}
    hit1: dict[str, int] = {}
    async with open_services(Settings(data_dir=tmp_path / "data")) as services:
        results = await services.pipeline.ingest_paths([folder])
        assert all(r.status == "completed" for r in results)
        for mode in ("lexical", "semantic", "hybrid"):
            total, first = 0.0, 0
            for query, want in QUERIES:
                found = (await services.search.search(query, mode=mode, top_k=10)).results
                names = [Path(r.filename).stem for r in found]
                rank = names.index(want) + 1 if want in names else 0
                total += 1 / rank if rank else 0.0
                first += rank == 1
            mrr[mode], hit1[mode] = total / len(QUERIES), first
    # Lexical misses paraphrases; semantic confuses look-alike codes (E4471 vs E4472).
    assert mrr["hybrid"] > mrr["lexical"], mrr
    assert mrr["hybrid"] > mrr["semantic"], mrr
    assert hit1["hybrid"] >= max(hit1["lexical"], hit1["semantic"]), hit1
