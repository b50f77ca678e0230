"""Defects found by probing the server (issue 12), against a real uvicorn server: DNS
rebinding (Host), cross-site requests and WebSockets (Origin), X-Request-ID on every answer,
5xx in the log with their request id, and `Allow` on 405."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from studyrag.api.origin import allowed_host, allowed_origin
from studyrag.app import create_app
from studyrag.config import Settings
from tests.api.conftest import LiveServer, run_server, server_settings

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(tmp_path_factory.mktemp("hard"))
    with run_server(settings, ingest=False, with_chat=False) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as client:
        yield client


def house(response: httpx.Response, code: str, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["error_code"] == code
    assert body["message"] and body["details"]["hint"]  # type: ignore[index]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_a_foreign_host_header_is_refused(http: httpx.Client, server: LiveServer) -> None:
    house(http.get("/api/documents", headers={"Host": "evil.example"}), "REQUEST_004", 421)
    house(http.get("/health", headers={"Host": f"evil.example:{server.port}"}), "REQUEST_004", 421)
    for name in ("localhost", "127.0.0.1", "[::1]"):
        res = http.get("/api/documents", headers={"Host": f"{name}:{server.port}"})
        assert res.status_code == 200, (name, res.text)


def test_the_host_rules() -> None:
    assert allowed_host("localhost:8000", bound="127.0.0.1", extra=[])
    assert not allowed_host("evil.example", bound="127.0.0.1", extra=[])
    assert allowed_host("anything.example", bound="0.0.0.0", extra=[])  # noqa: S104
    # With a list, binding everywhere serves only the listed (and local) names.
    assert not allowed_host("evil.example", bound="0.0.0.0", extra=["study.example"])  # noqa: S104
    assert allowed_host("Study.Example:443", bound="0.0.0.0", extra=["study.example"])  # noqa: S104
    assert allowed_host("10.0.0.5:8000", bound="10.0.0.5", extra=[])


def test_the_origin_rules() -> None:
    assert allowed_origin("http://127.0.0.1:8000", host="127.0.0.1:8000", extra=[])
    assert allowed_origin("http://localhost", host="localhost:80", extra=[])
    assert not allowed_origin("http://127.0.0.1:9000", host="127.0.0.1:8000", extra=[])
    assert not allowed_origin(EVIL, host="127.0.0.1:8000", extra=[])
    assert not allowed_origin("null", host="127.0.0.1:8000", extra=[])
    assert allowed_origin(
        "https://app.example/", host="127.0.0.1:8000", extra=["https://app.example"]
    )


def test_a_cross_site_form_upload_is_refused_and_stores_nothing(
    http: httpx.Client, server: LiveServer
) -> None:
    before = http.get("/api/documents").json()["total"]
    files = {"file": ("x.md", b"# Cross site\n\nNot to be stored.\n", "text/markdown")}
    house(http.post("/api/documents", files=files, headers={"Origin": EVIL}), "REQUEST_005", 403)
    cross = {"Sec-Fetch-Site": "cross-site"}
    house(http.post("/api/documents", files=files, headers=cross), "REQUEST_005", 403)
    assert http.get("/api/documents").json()["total"] == before
    # The server's own pages, and programs that send no Origin, may upload.
    own = {"Origin": server.base, "Sec-Fetch-Site": "same-origin"}
    assert http.post("/api/documents", files=files, headers=own).status_code == 201
    assert http.get("/api/documents").json()["total"] == before + 1


def test_cross_site_state_changes_are_refused_reads_are_not(http: httpx.Client) -> None:
    house(
        http.post("/api/notebooks", json={"name": "x"}, headers={"Origin": EVIL}),
        "REQUEST_005",
        403,
    )
    assert http.get("/api/notebooks", headers={"Origin": EVIL}).status_code == 200
    assert http.post("/api/notebooks", json={"name": "cli"}).status_code == 201


async def test_a_cross_site_websocket_is_refused(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.base) as http:
        notebook = (await http.get("/api/notebooks")).json()["items"][0]["id"]
    url = f"ws://127.0.0.1:{server.port}/ws/notebooks/{notebook}"
    for path in (url, f"ws://127.0.0.1:{server.port}/ws/chat/anything"):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(path, origin=EVIL):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
    with pytest.raises(websockets.exceptions.InvalidStatus) as rebound:
        async with websockets.connect(url, additional_headers={"Host": "evil.example"}):
            pass
    assert rebound.value.response.status_code == 421
    for origin in (server.base, None):
        async with websockets.connect(url, origin=origin) as ws:  # type: ignore[arg-type]
            assert ws.response.status_code == 101


def test_405_says_which_methods_are_allowed(http: httpx.Client) -> None:
    res = http.patch("/api/chat/conversations/nope")
    body = house(res, "METHOD_NOT_ALLOWED", 405)
    assert res.headers["allow"] == "DELETE, GET, PUT"
    assert body["details"]["allow"] == ["DELETE", "GET", "PUT"]  # type: ignore[index]
    assert http.delete("/health").headers["allow"] == "GET"


async def test_a_500_carries_its_request_id_and_is_logged_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "data"))

    async def boom() -> None:
        raise RuntimeError("probe")

    app.add_api_route("/api/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        with caplog.at_level(logging.ERROR):
            res = await client.get("/api/boom")
    body = house(res, "GEN_001", 500)
    assert body["request_id"] in caplog.text


async def test_slow_headers_are_cut_off_at_the_deadline() -> None:
    import asyncio
    import time

    import uvicorn

    from studyrag.api.slow_clients import header_deadline_protocol
    from tests.conftest import free_port

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", http=header_deadline_protocol(1.0)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        # A client that trickles its headers is closed soon after the deadline ...
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(20):  # 10 s of headers, one line every half second
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.write(b"X-Slow: 1\r\n")
            closed = await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionError:
            closed = True
        assert closed and time.monotonic() - started < 4
        writer.close()
        # ... and one that sends them in time is answered, also on its next request.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 204")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    finally:
        server.should_exit = True
        await task


async def test_header_deadline_leaves_an_upgraded_websocket_alone() -> None:
    # After the upgrade the socket belongs to the WebSocket protocol; the h11 protocol's
    # header timer once stayed armed and closed every `studyrag serve` WebSocket after 10 s.
    import asyncio

    import uvicorn
    import websockets

    from studyrag.api.slow_clients import header_deadline_protocol
    from tests.conftest import free_port

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", http=header_deadline_protocol(0.5)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            for i in range(4):  # 2 s: four times the header deadline
                await asyncio.sleep(0.5)
                await ws.send(f"still here {i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"still here {i}"
    finally:
        server.should_exit = True
        await task
