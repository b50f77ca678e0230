"""The embedder's model gate: one call at a time, waiting queries before waiting documents."""

from __future__ import annotations

import threading
import time

from studyrag.backends.embeddings.sentence_transformers import ModelGate


def _waiter(gate: ModelGate, *, urgent: bool, order: list[str], name: str) -> threading.Thread:
    def run() -> None:
        gate.acquire(urgent=urgent)
        order.append(name)
        gate.release()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _until_waiting(gate: ModelGate, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(gate._cond._waiters) < count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the waiters never blocked"
        time.sleep(0.001)


def test_a_query_that_arrives_later_is_served_before_waiting_documents() -> None:
    gate = ModelGate()
    order: list[str] = []
    gate.acquire(urgent=False)  # a document slice is being encoded
    docs = [_waiter(gate, urgent=False, order=order, name=f"doc{i}") for i in range(2)]
    _until_waiting(gate, 2)
    query = _waiter(gate, urgent=True, order=order, name="query")
    _until_waiting(gate, 3)
    gate.release()
    for thread in (*docs, query):
        thread.join(timeout=5)
    assert order[0] == "query" and sorted(order[1:]) == ["doc0", "doc1"]


def test_one_holder_at_a_time() -> None:
    gate = ModelGate()
    inside = 0
    peak = 0
    lock = threading.Lock()

    def work(urgent: bool) -> None:
        nonlocal inside, peak
        for _ in range(200):
            gate.acquire(urgent=urgent)
            with lock:
                inside += 1
                peak = max(peak, inside)
            with lock:
                inside -= 1
            gate.release()

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert peak == 1
