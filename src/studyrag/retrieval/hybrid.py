"""Fusion of the lexical and semantic rankings into one hybrid ranking.

The default is score fusion (CombSUM) of normalised scores with a query-adaptive weight:

- Each list's scores are sum-normalised over that list's own candidates (Montague & Aslam,
  "Relevance score normalization for metasearch", 2001): a candidate's excess over the list's
  lowest score, in units of the list's mean excess. BM25 (unbounded) and cosine (MiniLM puts
  a whole candidate list inside 0.5-0.7) become comparable, and unlike ranks the values keep
  how far a candidate stands out. A candidate missing from a list gets 0: it scored at most
  that list's lowest.
- The lexical share of the sum follows how much of the query lexical search could match at
  all: its coverage, the best BM25 score over the score a passage holding every query term
  once would get (capped at 1). A dense embedding always encodes the whole query; a BM25 top
  hit that explains a third of the query's idf is weak evidence, as for long questions whose
  rare words ("please explain why") are not what the document is about. The share is half
  the coverage: the two lists weigh the same when the best lexical match covers the whole
  query, and lexical fades out as less of the query is found.

Reciprocal-rank fusion stays available (setting `search.fusion = "rrf"`).
"""

from __future__ import annotations

from studyrag.retrieval.types import Candidate

# (chunk_id, fused score in [0, 1], the score each mode gave it)
Fused = tuple[int, float, dict[str, float]]


def sum_normalised(ranking: list[Candidate]) -> dict[int, float]:
    """Each candidate's excess over the list's lowest score, in units of its mean excess."""
    if not ranking:
        return {}
    lowest = min(c.score for c in ranking)
    mean_excess = sum(c.score - lowest for c in ranking) / len(ranking)
    if mean_excess <= 0:
        # All scores equal (or one candidate): being in the list is all it says.
        return {c.chunk_id: 1.0 for c in ranking}
    return {c.chunk_id: (c.score - lowest) / mean_excess for c in ranking}


def lexical_coverage(lexical: list[Candidate], full_match: float | None) -> float:
    """How much of the query the best lexical match holds, in [0, 1] (1 when unknown)."""
    if not lexical:
        return 0.0
    if full_match is None or full_match <= 0:
        return 1.0  # no BM25 scale (PostgreSQL): fall back to equal weights
    return min(1.0, max(0.0, lexical[0].score / full_match))


def fusion_weights(
    lexical: list[Candidate],
    full_match: float | None,
    *,
    semantic_weight: float = 1.0,
    lexical_weight: float = 1.0,
) -> dict[str, float]:
    """Per-mode weights: the lexical share is half the lexical coverage, times the settings."""
    share = lexical_coverage(lexical, full_match) / 2
    return {"semantic": semantic_weight * (1 - share), "lexical": lexical_weight * share}


def score_fusion(rankings: dict[str, list[Candidate]], *, weights: dict[str, float]) -> list[Fused]:
    """Weighted sum of sum-normalised scores, best first; ties go to the better-ranked candidate.

    The fused score is divided by the best one possible (the top of every weighted list), so
    1.0 means "best in every mode" whatever the weights, as with the RRF score it replaces.
    """
    fused: dict[int, float] = {}
    per_mode: dict[int, dict[str, float]] = {}
    best_rank: dict[int, int] = {}
    best = 0.0
    for mode, ranking in rankings.items():
        weight = weights.get(mode, 1.0)
        normalised = sum_normalised(ranking)
        if normalised:
            best += weight * max(normalised.values())
        for rank, cand in enumerate(ranking):
            cid = cand.chunk_id
            fused[cid] = fused.get(cid, 0.0) + weight * normalised[cid]
            per_mode.setdefault(cid, {})[mode] = cand.score
            best_rank[cid] = min(rank, best_rank.get(cid, rank))
    order = sorted(fused, key=lambda cid: (-fused[cid], best_rank[cid], cid))
    return [(cid, fused[cid] / best if best > 0 else 0.0, per_mode[cid]) for cid in order]


def reciprocal_rank_fusion(
    rankings: dict[str, list[Candidate]], *, weights: dict[str, float], k: int = 60
) -> list[Fused]:
    """(chunk_id, fused score normalised to [0, 1], per-mode scores), best first.

    RRF ignores raw score scales (BM25 and cosine are not comparable) and only uses ranks;
    the fused score is divided by its maximum (rank 1 in every weighted mode) so a single
    relevance threshold means the same thing whatever the weights.
    """
    fused: dict[int, float] = {}
    per_mode: dict[int, dict[str, float]] = {}
    for mode, ranking in rankings.items():
        weight = weights.get(mode, 1.0)
        for rank, cand in enumerate(ranking, start=1):
            fused[cand.chunk_id] = fused.get(cand.chunk_id, 0.0) + weight / (k + rank)
            per_mode.setdefault(cand.chunk_id, {})[mode] = cand.score
    best = sum(weights.get(m, 1.0) for m in rankings) / (k + 1)
    order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(cid, score / best if best else 0.0, per_mode[cid]) for cid, score in order]
