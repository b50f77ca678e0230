"""Fixtures every browser module shares: one chromium per module, and a fresh Watch per test
on the module's own `server`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.harness import Watch, launch


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def watch(server: str) -> Watch:
    return Watch(server)
