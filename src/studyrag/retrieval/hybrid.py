"""Reciprocal-rank fusion of the lexical and semantic rankings."""

from __future__ import annotations

from studyrag.retrieval.types import Candidate


def reciprocal_rank_fusion(
    rankings: dict[str, list[Candidate]], *, weights: dict[str, float], k: int = 60
) -> list[tuple[int, float, dict[str, float]]]:
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
