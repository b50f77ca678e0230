"""Hybrid fusion: sum-normalised score fusion with a coverage-weighted lexical share."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from studyrag.db.repo import COMPLETED, DocumentRepo
from studyrag.db.session import Database
from studyrag.retrieval import lexical
from studyrag.retrieval.hybrid import (
    fusion_weights,
    lexical_coverage,
    score_fusion,
    sum_normalised,
)
from studyrag.retrieval.lexical import LexicalIndex
from studyrag.retrieval.types import Candidate


def ranking(*pairs: tuple[int, float]) -> list[Candidate]:
    return [Candidate(cid, score) for cid, score in sorted(pairs, key=lambda p: -p[1])]


def order(fused: list[tuple[int, float, dict[str, float]]]) -> list[int]:
    return [cid for cid, _, _ in fused]


SEM = ranking((1, 0.71), (2, 0.66), (3, 0.64), (4, 0.52), (5, 0.50))
LEX = ranking((6, 21.0), (3, 17.5), (7, 9.0), (1, 8.5), (8, 4.0))


def test_sum_normalisation_is_shift_and_scale_free() -> None:
    base = sum_normalised(LEX)
    moved = sum_normalised([Candidate(c.chunk_id, 3 * c.score + 40) for c in LEX])
    assert moved == pytest.approx(base)
    assert min(base.values()) == 0.0
    assert sum(base.values()) / len(base) == pytest.approx(1.0)  # mean excess is the unit
    # One candidate, or all equal: membership is all a list says.
    assert sum_normalised([Candidate(9, 3.0)]) == {9: 1.0}
    assert sum_normalised(ranking((1, 2.0), (2, 2.0))) == {1: 1.0, 2: 1.0}
    assert sum_normalised([]) == {}


@pytest.mark.parametrize("weights", [{"semantic": 0.8, "lexical": 0.2}, {}])
def test_an_empty_list_returns_the_other_order(weights: dict[str, float]) -> None:
    only_sem = score_fusion({"semantic": SEM, "lexical": []}, weights=weights)
    assert order(only_sem) == [c.chunk_id for c in SEM]
    only_lex = score_fusion({"semantic": [], "lexical": LEX}, weights=weights)
    assert order(only_lex) == [c.chunk_id for c in LEX]
    assert only_sem[0][1] == pytest.approx(1.0) and only_lex[0][1] == pytest.approx(1.0)
    assert score_fusion({"semantic": [], "lexical": []}, weights=weights) == []


def test_identical_lists_keep_the_order() -> None:
    same = ranking((4, 0.9), (9, 0.8), (2, 0.8), (1, 0.3), (7, 0.1))
    fused = score_fusion({"semantic": same, "lexical": list(same)}, weights={})
    # 9 and 2 tie everywhere: the list order stands (9 came first), not the chunk id.
    assert order(fused) == [4, 9, 2, 1, 7]
    assert fused[0][1] == pytest.approx(1.0)


def test_ties_go_to_the_better_ranked_candidate_then_the_lower_id() -> None:
    # Mirrored lists, evenly spaced exact binary fractions: all three fuse to one score.
    sem = ranking((1, 0.75), (2, 0.5), (3, 0.25))
    lex = ranking((3, 12.0), (2, 8.0), (1, 4.0))
    fused = score_fusion({"semantic": sem, "lexical": lex}, weights={})
    assert {score for _, score, _ in fused} == {0.5}
    # 1 and 3 are each first somewhere, 2 is nowhere first; then the lower id.
    assert order(fused) == [1, 3, 2]


def test_per_mode_scores_are_kept_and_the_fused_score_is_in_0_1() -> None:
    fused = score_fusion({"semantic": SEM, "lexical": LEX}, weights={})
    per_mode = {cid: modes for cid, _, modes in fused}
    assert per_mode[1] == {"semantic": 0.71, "lexical": 8.5}
    assert per_mode[3] == {"semantic": 0.64, "lexical": 17.5}
    assert per_mode[6] == {"lexical": 21.0} and per_mode[2] == {"semantic": 0.66}
    assert set(per_mode) == {c.chunk_id for c in SEM + LEX}
    assert all(0.0 <= score <= 1.0 for _, score, _ in fused)
    # Found by both, near the top of both: ahead of what only one list found.
    assert order(fused)[0] == 3
    assert [s for _, s, _ in fused] == sorted((s for _, s, _ in fused), reverse=True)
    top = ranking((1, 0.9), (2, 0.2))
    best = score_fusion({"semantic": top, "lexical": ranking((1, 5.0), (2, 1.0))}, weights={})
    assert best[0] == (1, pytest.approx(1.0), {"semantic": 0.9, "lexical": 5.0})


def _fused(sem: list[Candidate], lex: list[Candidate], full: float) -> dict[int, float]:
    fused = score_fusion({"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, full))
    return {cid: score for cid, score, _ in fused}


def test_raising_a_score_never_lowers_a_candidate() -> None:
    """Monotonicity, for every candidate above its list's lowest (which sets the floor)."""
    rng = random.Random(5)
    checked = 0
    for _ in range(3000):
        ids = rng.sample(range(12), 12)
        sem = ranking(*((c, rng.uniform(0.2, 0.8)) for c in ids[: rng.randint(2, 8)]))
        lex = ranking(*((c, rng.uniform(1, 30)) for c in rng.sample(ids, rng.randint(2, 8))))
        full = rng.uniform(5, 60)
        mode = rng.choice(["semantic", "lexical"])
        raised = sem if mode == "semantic" else lex
        cand = rng.choice(raised[:-1])
        bump = rng.uniform(0, 0.5) if mode == "semantic" else rng.uniform(0, 20)
        after = ranking(*((c.chunk_id, c.score + (bump if c is cand else 0.0)) for c in raised))

        before_scores = _fused(sem, lex, full)
        after_scores = _fused(after, lex, full) if mode == "semantic" else _fused(sem, after, full)
        me = cand.chunk_id
        for other, score in before_scores.items():
            if other != me and before_scores[me] > score + 1e-9:
                assert after_scores[me] >= after_scores[other] - 1e-9, (sem, lex, me, other)
                checked += 1
    assert checked > 3000  # the property was exercised, not skipped


def test_lexical_share_follows_its_coverage() -> None:
    assert lexical_coverage(LEX, full_match=42.0) == pytest.approx(0.5)
    assert lexical_coverage(LEX, full_match=10.0) == 1.0  # capped: repeats can beat "once"
    assert lexical_coverage([], full_match=10.0) == 0.0
    assert lexical_coverage(LEX, full_match=None) == 1.0  # no BM25 scale: equal weights
    assert fusion_weights(LEX, 42.0) == {"semantic": 0.75, "lexical": 0.25}
    assert fusion_weights(LEX, None) == {"semantic": 0.5, "lexical": 0.5}
    assert fusion_weights([], 42.0) == {"semantic": 1.0, "lexical": 0.0}
    # The settings multiply the adaptive weights; 0 turns a mode off.
    assert fusion_weights(LEX, 42.0, semantic_weight=2.0, lexical_weight=0.0) == {
        "semantic": 1.5,
        "lexical": 0.0,
    }


def test_a_lexical_match_of_little_of_the_query_cannot_overrule_semantic() -> None:
    sem = ranking((1, 0.70), (2, 0.60), (3, 0.55), (4, 0.50))
    lex = ranking((4, 30.0), (3, 10.0), (5, 9.0), (6, 8.0))
    full_cover = score_fusion({"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, 30.0))
    weak = score_fusion({"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, 300.0))
    assert order(full_cover)[0] == 4  # the whole query matched: lexical's top counts fully
    assert order(weak)[0] == 1  # a tenth of the query: semantic's order stands
    no_lex = score_fusion(
        {"semantic": sem, "lexical": lex}, weights=fusion_weights(lex, 30.0, lexical_weight=0.0)
    )
    assert order(no_lex)[:4] == [1, 2, 3, 4]


async def test_full_match_is_the_score_of_a_row_holding_each_term_once(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'full.db'}")
    await db.migrate()
    repo = DocumentRepo(db)
    doc = await repo.create(
        filename="d.md", file_type="md", sha256=uuid.uuid4().hex, status=COMPLETED
    )
    # Every row five tokens long, so each is exactly of average length; alpha and beta in
    # some rows, gamma only in the one row that holds each query term once.
    fillers = ["one", "two", "three", "four", "five"]
    texts = [" ".join(["alpha", *fillers[1:]]) for _ in range(10)]
    texts += [" ".join(["beta", *fillers[1:]]) for _ in range(15)]
    texts += [" ".join(fillers) for _ in range(35)]
    texts.append("alpha beta gamma one two")
    await repo.insert_chunks(
        doc.id,
        [
            {"index": i, "text": t, "start_char": 0, "end_char": len(t), "page": None,
             "section": "", "token_count": 5}
            for i, t in enumerate(texts)
        ],
    )  # fmt: skip
    lex = LexicalIndex(db)
    ranked = await lex.rank("alpha beta gamma", top_k=5)
    assert ranked.full_match is not None
    holder = next(
        c for c in ranked.candidates if c.score == max(x.score for x in ranked.candidates)
    )
    assert holder.score == pytest.approx(ranked.full_match, rel=1e-9)
    assert lexical_coverage(ranked.candidates, ranked.full_match) == pytest.approx(1.0)
    rows = len(texts)
    idf = {t: lexical._idf(rows, n) for t, n in lex._df.items()}
    assert ranked.full_match == pytest.approx(idf["alpha"] + idf["beta"] + idf["gamma"])
    # search() is the same top k without the extra statistics.
    assert [c.chunk_id for c in await lex.search("alpha beta gamma", top_k=5)] == [
        c.chunk_id for c in ranked.candidates
    ]
    assert (await lex.rank("   ", top_k=5)).full_match is None
    await db.aclose()
