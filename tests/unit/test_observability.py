"""Metrics registries, the quantile estimate, JSON log records and the memory watch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from studyrag.observability.logs import JsonFormatter, RequestIdFilter, request_id_var
from studyrag.observability.memory import (
    MemoryWatch,
    _heap_trimmer,
    memory_limit,
    physical_memory,
    release_freed_memory,
    resident_memory,
)
from studyrag.observability.metrics import Metrics, histogram_quantile


def test_each_metrics_instance_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.error("CHAT_005", "chat")
    one.error("CHAT_005", "chat")
    two.search_duration.labels(mode="hybrid").observe(0.01)
    assert one.value("studyrag_errors_total", {"code": "CHAT_005", "area": "chat"}) == 2
    assert two.value("studyrag_errors_total", {"code": "CHAT_005", "area": "chat"}) == 0
    assert one.value("studyrag_search_duration_seconds_count", {"mode": "hybrid"}) == 0
    assert two.value("studyrag_search_duration_seconds_count", {"mode": "hybrid"}) == 1
    assert b"studyrag_build_info" in one.render()


def test_watched_gauges_read_at_scrape_time() -> None:
    metrics = Metrics()
    state = {"n": 3}
    metrics.watch(metrics.websocket_connections, lambda: float(state["n"]), endpoint="chat")
    assert metrics.value("studyrag_websocket_connections", {"endpoint": "chat"}) == 3
    state["n"] = 5
    assert metrics.value("studyrag_websocket_connections", {"endpoint": "chat"}) == 5


def test_histogram_quantile_interpolates_like_promql() -> None:
    # 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, +Inf).
    buckets = [(1.0, 4.0), (2.0, 8.0), (float("inf"), 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.25)
    assert histogram_quantile(0.2, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.95, buckets) == 2.0  # beyond the last finite bucket
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    metrics = Metrics()
    for seconds in (0.2, 0.3, 0.6, 0.7):
        metrics.answer_duration.observe(seconds)
    assert metrics.quantile(0.5, "studyrag_answer_duration_seconds") == pytest.approx(0.5)


def test_json_records_carry_the_request_id_and_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "studyrag.access", "levelname": "INFO", "msg": "GET %s", "args": ("/x",)}
    )
    record.__dict__.update(route="/x", status=200, duration_ms=1.5)
    token = request_id_var.set("rid-42")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "rid-42" and line["message"] == "GET /x"
    assert (line["route"], line["status"], line["duration_ms"]) == ("/x", 200, 1.5)
    assert line["level"] == "INFO" and line["logger"] == "studyrag.access" and line["ts"]


def test_memory_watch_warns_once_per_excursion(caplog: pytest.LogCaptureFixture) -> None:
    watch = MemoryWatch(ratio=0.8, interval=1, limit=1000)
    with caplog.at_level(logging.WARNING, logger="studyrag.observability.memory"):
        assert not watch.check(used=700)
        assert watch.check(used=801)
        assert not watch.check(used=900)  # still over: no second warning
        assert not watch.check(used=500)  # back under: re-armed
        assert watch.check(used=850)
    assert watch.warnings == 2
    assert len(caplog.records) == 2 and "80%" in caplog.records[0].getMessage()


def test_memory_limit_comes_from_the_cgroup_when_set(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory_limit(tmp_path) == (536870912, str(tmp_path / "memory.max"))
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit(tmp_path) == (physical_memory(), "physical RAM")
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory_limit(tmp_path)[1] == "physical RAM"
    (v1 / "memory.limit_in_bytes").write_text("1073741824\n")
    assert memory_limit(tmp_path)[0] == 1073741824


def test_releasing_freed_memory_gives_freed_heap_back() -> None:
    if _heap_trimmer() is None:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    # 120 MB of 4 KiB blocks, one in 64 kept: glibc cannot shrink its heap past a kept
    # block, so without a trim the freed pages stay resident.
    blocks = [bytes(4096) for _ in range(30_000)]
    kept = blocks[::64]
    del blocks
    before = resident_memory()
    release_freed_memory()
    after = resident_memory()
    assert before - after > 50 * 2**20, (before, after)
    assert len(kept) == 469


async def test_the_memory_watch_trims_before_it_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from studyrag.observability import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append("trim"))
    watch = MemoryWatch(ratio=0.8, interval=0.01, limit=1 << 50)
    monkeypatch.setattr(watch, "check", lambda used=None: calls.append("check") or False)
    await watch.start()
    await asyncio.sleep(0.1)
    await watch.aclose()
    assert calls[:2] == ["trim", "check"]
