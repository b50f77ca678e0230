"""Context builder, reciprocal-rank fusion and snippet highlighting."""

from __future__ import annotations

from studyrag.retrieval.context import build_context
from studyrag.retrieval.hybrid import reciprocal_rank_fusion
from studyrag.retrieval.search import highlight
from studyrag.retrieval.types import Candidate, SearchResult


def result(cid: int, text: str, *, doc: str = "d1", start: int = 0, page: int | None = 1):
    return SearchResult(
        rank=cid,
        score=1.0 / cid,
        chunk_id=cid,
        document_id=doc,
        filename=f"{doc}.pdf",
        file_type="pdf",
        page=page,
        section="Intro",
        start=start,
        end=start + len(text),
        text=text,
        snippet="",
    )


def words(text: str) -> int:
    return len(text.split())


def test_context_numbers_dedupes_and_respects_the_budget() -> None:
    results = [
        result(1, "alpha beta gamma delta", start=0),
        result(2, "alpha   beta gamma DELTA", doc="d2"),  # same text, other document
        result(3, "alpha beta gamma delta epsilon", start=2),  # overlaps chunk 1 mostly
        result(4, "zeta eta theta", doc="d3"),
        result(5, " ".join(["long"] * 50), doc="d4"),
    ]
    ctx = build_context(results, budget=30, count_tokens=words)
    assert [s.chunk_id for s in ctx.sources] == [1, 4]
    assert [s.index for s in ctx.sources] == [1, 2]
    assert ctx.text.startswith("[1] d1.pdf, p. 1, Intro\nalpha beta gamma delta")
    assert "[2] d3.pdf, p. 1, Intro\nzeta eta theta" in ctx.text
    assert ctx.tokens <= 30


def test_context_always_keeps_the_best_passage_trimmed() -> None:
    ctx = build_context([result(1, " ".join(["w"] * 100))], budget=20, count_tokens=words)
    assert len(ctx.sources) == 1 and words(ctx.text) <= 20


def test_rrf_rewards_agreement_and_normalises() -> None:
    fused = reciprocal_rank_fusion(
        {
            "semantic": [Candidate(1, 0.9), Candidate(2, 0.8)],
            "lexical": [Candidate(2, 7.0), Candidate(3, 5.0)],
        },
        weights={"semantic": 1.0, "lexical": 1.0},
        k=60,
    )
    assert [cid for cid, _, _ in fused] == [2, 1, 3]
    assert fused[0][2] == {"semantic": 0.8, "lexical": 7.0}
    assert 0 < fused[-1][1] < fused[0][1] < 1
    only = reciprocal_rank_fusion({"semantic": [Candidate(9, 0.5)]}, weights={}, k=60)
    assert only == [(9, 1.0, {"semantic": 0.5})]


def test_highlight_marks_terms_and_stems() -> None:
    text = "Photosynthesis happens in chloroplasts. Chlorophyll absorbs blue and red light."
    out = highlight(text, ["chlorophyll", "absorb"])
    assert "<mark>Chlorophyll</mark>" in out and "<mark>absorbs</mark>" in out
    long = "x " * 300 + "the key term here " + "y " * 300
    snippet = highlight(long, ["key"])
    assert "<mark>key</mark>" in snippet and snippet.startswith("…") and snippet.endswith("…")
