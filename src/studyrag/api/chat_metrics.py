"""ChatMetrics: the chat transport's live figures, read from the app's metrics registry."""

from __future__ import annotations

from typing import Any

from studyrag.observability.metrics import Metrics

# The `area` label of the errors the chat transport reports (see Metrics.errors).
CHAT_AREA = "chat"


class ChatMetrics:
    """Live chat figures since start-up for /api/chat/stats, read from the metrics registry.

    Nothing is counted here: every figure is a sample of the registry GET /metrics renders,
    so the two cannot disagree. Response times are the `studyrag_answer_duration_seconds`
    histogram: count and mean exact, p95 estimated from its buckets as PromQL would.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()

    def error(self, code: str) -> None:
        """Count one error reported to a chat client."""
        self.metrics.error(code, CHAT_AREA)

    def token(self) -> None:
        """Count one answer piece streamed."""
        self.metrics.answer_tokens.inc()

    def finished(self, outcome: str, seconds: float | None) -> None:
        """Count an answer's outcome; a complete one's duration goes into the histogram."""
        self.metrics.answers.labels(outcome=outcome).inc()
        if outcome == "complete" and seconds is not None:
            self.metrics.answer_duration.observe(seconds)

    @property
    def tokens_generated(self) -> int:
        return int(self.metrics.value("studyrag_answer_tokens_total"))

    @property
    def errors_by_code(self) -> dict[str, int]:
        return {
            labels["code"]: int(value)
            for labels, value in self.metrics.samples("studyrag_errors_total")
            if labels.get("area") == CHAT_AREA
        }

    def snapshot(self) -> dict[str, Any]:
        """Mean and p95 response time (seconds) of complete answers, and the counters."""
        m = self.metrics
        count = int(m.value("studyrag_answer_duration_seconds_count"))
        total = m.value("studyrag_answer_duration_seconds_sum")
        p95 = m.quantile(0.95, "studyrag_answer_duration_seconds")
        return {
            "answers": {
                labels["outcome"]: int(value)
                for labels, value in m.samples("studyrag_answers_total")
            },
            "response_time": {
                "count": count,
                "mean_seconds": round(total / count, 4) if count else None,
                "p95_seconds": round(p95, 4) if p95 is not None else None,
            },
            "tokens_generated": self.tokens_generated,
            "errors_by_code": self.errors_by_code,
        }
