"""A real `studyrag serve` on a temporary data dir, Debian's chromium driven by Playwright,
and the checks every browser scene shares (no dialog, no request leaving, no page error)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

EXE = str(Path(sys.executable).with_name("studyrag"))
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@contextmanager
def serve(data_dir: Path, port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`studyrag serve` until /health answers; its base URL; SIGTERM at the end."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    base_env |= {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    base_env |= env or {}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [EXE, "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=base_env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "studyrag serve did not start"
            time.sleep(0.25)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu"],
    )


@dataclass
class Watch:
    """What a page did that it must not: dialogs, requests to other origins, script errors."""

    base: str
    dialogs: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, context: Any) -> None:
        def route(r: Any) -> None:
            url = r.request.url
            if url.startswith(self.base) or url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                self.outside.append(url)
                r.abort()

        context.route("**/*", route)
        context.on("page", self.page)

    def page(self, page: Any) -> None:
        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "console",
            lambda m: (
                self.errors.append(f"{m.text} at {m.location} on {page.url}")
                if m.type == "error" and "Content Security Policy" in m.text
                else None
            ),
        )

    def clean(self) -> None:
        assert not self.dialogs, self.dialogs
        assert not self.outside, self.outside
        assert not self.errors, self.errors


def no_horizontal_overflow(page: Any) -> None:
    """Nothing sticks out on the right, unless a scrolling or clipping box inside the page
    holds it (body's own overflow-x: hidden does not count)."""
    width = page.evaluate("document.documentElement.scrollWidth")
    bad = page.evaluate(
        """() => { const W = document.documentElement.clientWidth, bad = [];
          for (const el of document.querySelectorAll('body *')) {
            const r = el.getBoundingClientRect();
            if (!r.width || r.right <= W + 1) continue;
            let held = false;
            for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
              if (getComputedStyle(a).overflowX !== 'visible') {
                held = a.getBoundingClientRect().right <= W + 1; break; } }
            if (!held) bad.push(`${el.tagName}.${el.className} right=${Math.round(r.right)}`); }
          return bad; }"""
    )
    assert not bad, bad
    # What sticks out but is held by a clipping box still widens the page if the box does.
    assert width <= page.viewport_size["width"], (width, _widest(page))


def _widest(page: Any) -> list[str]:
    """The elements reaching furthest right, to say what widens the page."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('body *')]
              .map(el => [el.getBoundingClientRect().right, el])
              .sort((x, y) => y[0] - x[0]).slice(0, 4)
              .map(([r, el]) => `${el.tagName}.${el.className} [${el.dataset.testid || ''}] `
                + `right=${Math.round(r)} ${(el.textContent || '').slice(0, 60)}`)"""
        )
    )


def record_texts(page: Any, testid: str) -> None:
    """Keep, in the page, every text the element with this testid shows (read: texts())."""
    page.evaluate(
        """(testid) => { window.__texts = window.__texts || {}; const seen = [];
          window.__texts[testid] = seen;
          new MutationObserver(() => {
            const el = document.querySelector(`[data-testid=${testid}]`);
            if (el && seen.at(-1) !== el.textContent) seen.push(el.textContent); })
          .observe(document.body, {subtree: true, childList: true, characterData: true}); }""",
        testid,
    )


def texts(page: Any, testid: str) -> list[str]:
    """What record_texts kept so far."""
    return list(page.evaluate("(t) => window.__texts[t]", testid))


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def make_pdf(path: Path) -> Path:
    """Three pages, one topic each (cells, photosynthesis, respiration)."""
    from fpdf import FPDF

    pages = [
        (
            "Cell structure",
            "Every living thing is made of cells. The cell membrane controls what enters and "
            "leaves the cell, and the nucleus holds the genetic material. Ribosomes build "
            "proteins from amino acids according to the instructions carried by messenger RNA.",
        ),
        (
            "Photosynthesis",
            "Plants capture light energy in their chloroplasts. Chlorophyll absorbs red and "
            "blue light and reflects green light, which is why leaves look green. The light "
            "reactions split water and release oxygen into the air.",
        ),
        (
            "Cellular respiration",
            "Mitochondria make ATP, the energy currency of the cell, by breaking down glucose "
            "with oxygen. This process is called cellular respiration and releases carbon "
            "dioxide and water. Muscle cells contain many mitochondria because they need "
            "a lot of energy.",
        ),
    ]
    pdf = FPDF()
    pdf.set_auto_page_break(True, margin=20)
    for title, body in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 18)
        pdf.cell(0, 12, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=12)
        for _ in range(2):
            pdf.multi_cell(0, 7, body)
            pdf.ln(3)
    pdf.output(str(path))
    return path


def wait_done(base: str, document_ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = [httpx.get(f"{base}/api/documents/{d}").json()["status"] for d in document_ids]
        if all(s == "completed" for s in states):
            return
        assert not any(s == "failed" for s in states), states
        assert time.monotonic() < deadline, states
        time.sleep(0.3)


def upload(base: str, notebook_id: str, *paths: Path) -> list[str]:
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    res = httpx.post(f"{base}/api/notebooks/{notebook_id}/documents", files=files, timeout=60)
    assert res.status_code == 202, res.text
    ids = [d["document_id"] for d in res.json()["documents"]]
    wait_done(base, ids)
    return ids


def new_notebook(base: str, name: str) -> str:
    res = httpx.post(f"{base}/api/notebooks", json={"name": name})
    assert res.status_code == 201, res.text
    return str(res.json()["id"])
