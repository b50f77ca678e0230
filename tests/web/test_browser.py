"""The web interface in a real browser (Debian's chromium) against a real `studyrag serve`
with the real models: SmolLM2 answers, MiniLM embeds. Each scene leaves a screenshot in
test-artifacts/."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.web.harness import (
    Watch,
    make_pdf,
    new_notebook,
    no_horizontal_overflow,
    serve,
    shot,
    upload,
)

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")

ANSWER_TIMEOUT = 120_000  # ms: the first token takes seconds on two shared cores


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web")
    env = {"STUDYRAG_LLM__MAX_TOKENS": "48", "STUDYRAG_LLM__N_THREADS": "2"}
    with serve(root / "data", free_port(), root / "serve.log", env) as base:
        yield base


def context(browser: Any, watch: Watch, **kw: Any) -> Any:
    ctx = browser.new_context(**kw)
    watch.attach(ctx)
    return ctx


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pdf(tmp_path_factory.mktemp("pdf") / "biology.pdf")


@pytest.fixture(scope="module")
def course(server: str, pdf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A notebook with the PDF and a chemistry note, both ingested."""
    nb = new_notebook(server, "Course")
    notes = tmp_path_factory.mktemp("notes") / "chemistry.txt"
    notes.write_text(
        "Water boils at 100 degrees Celsius at sea level.\n\n"
        "Sodium chloride is the chemical name of table salt. It dissolves in water.\n",
        encoding="utf-8",
    )
    pdf_id, txt_id = upload(server, nb, pdf, notes)
    return {"id": nb, "pdf": pdf_id, "txt": txt_id}


def ask(page: Any, question: str) -> None:
    page.get_by_test_id("chat-input").fill(question)
    page.get_by_test_id("chat-input").press("Enter")


def last_answer(page: Any) -> Any:
    return page.get_by_test_id("assistant-message").last


def wait_answer_done(page: Any) -> None:
    page.wait_for_function(
        """() => { const all = document.querySelectorAll('[data-testid=assistant-message]');
                   const m = all[all.length - 1];
                   return m && !m.classList.contains('streaming')
                          && m.dataset.status !== 'streaming'
                          && m.dataset.status !== ''; }""",
        timeout=ANSWER_TIMEOUT,
    )


def test_drop_a_pdf_and_watch_it_reach_done(server: str, browser: Any, watch: Watch, pdf: Path):
    ctx = context(browser, watch)
    page = ctx.new_page()
    page.goto(server)
    page.get_by_test_id("notebook-new").click()
    page.get_by_test_id("notebook-name-input").fill("Biology 101")
    page.get_by_test_id("notebook-name-input").press("Enter")
    page.get_by_test_id("drop-zone").wait_for()
    shot(page, "01-empty-notebook")
    # Record every status the row shows, from the page itself.
    page.evaluate(
        """() => { window.__statuses = [];
          new MutationObserver(() => document.querySelectorAll('[data-testid=source-status]')
            .forEach(s => { const t = s.textContent; if (window.__statuses.at(-1) !== t)
              window.__statuses.push(t); }))
          .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    data = base64.b64encode(pdf.read_bytes()).decode()
    page.evaluate(
        """([data, name]) => {
          const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, {type: 'application/pdf'}));
          const zone = document.querySelector('[data-testid=drop-zone]');
          for (const type of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(type,
              {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [data, pdf.name],
    )
    row = page.get_by_test_id("source-row").filter(has_text="biology.pdf")
    row.wait_for()
    row.get_by_test_id("source-status").filter(has_text="Done").wait_for(timeout=120_000)
    statuses = page.evaluate("window.__statuses")
    assert statuses[-1] == "Done"
    assert any(s != "Done" for s in statuses), statuses  # progress was shown on the way
    # The page count comes with the document's details, fetched once it is done.
    row.filter(has_text="3 p.").wait_for(timeout=15_000)
    assert row.get_by_test_id("source-include").is_checked()
    shot(page, "02-pdf-done")
    watch.clean()
    ctx.close()


def test_ask_and_see_the_answer_streamed_with_its_sources(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx = context(browser, watch)
    page = ctx.new_page()
    page.goto(f"{server}/#/n/{course['id']}")
    page.get_by_test_id("chat-input").wait_for()
    page.evaluate(
        """() => { window.__lengths = []; window.__sourcesBeforeText = null;
          new MutationObserver(() => {
            const m = [...document.querySelectorAll('[data-testid=assistant-message]')].pop();
            if (!m) return;
            const body = m.querySelector('[data-testid=answer-body]');
            const hasText = body && !body.querySelector('.muted');
            const src = m.querySelector('[data-testid=answer-source]');
            if (window.__sourcesBeforeText === null && src)
              window.__sourcesBeforeText = !hasText;
            if (hasText) { const n = body.textContent.length;
              if (window.__lengths.at(-1) !== n) window.__lengths.push(n); }
          }).observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    ask(page, "What do mitochondria make?")
    page.get_by_test_id("stop").wait_for(state="visible")
    wait_answer_done(page)
    lengths = page.evaluate("window.__lengths")
    assert len(lengths) >= 3, lengths  # painted token by token, not at once
    assert page.evaluate("window.__sourcesBeforeText") is True  # evidence first
    answer = last_answer(page)
    assert answer.get_by_test_id("answer-body").inner_text().strip()
    sources = answer.get_by_test_id("answer-source").all_inner_texts()
    assert sources and "biology.pdf" in sources[0] and "p. 3" in sources[0]
    assert page.get_by_test_id("stop").is_hidden()
    shot(page, "03-streamed-answer")
    # The stored answer is the one shown.
    cid = page.evaluate("location.hash").split("/c/")[1]
    items = httpx.get(f"{server}/api/chat/conversations/{cid}/messages").json()["items"]
    assert items[-1]["role"] == "assistant" and items[-1]["status"] == "complete"
    watch.clean()
    ctx.close()


def test_two_contexts_see_each_others_typing_and_messages(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    conv = httpx.post(
        f"{server}/api/chat/conversations", json={"notebook_id": course["id"], "title": "Shared"}
    ).json()
    url = f"{server}/#/n/{course['id']}/c/{conv['id']}"
    a_ctx, b_ctx = context(browser, watch), context(browser, watch)
    a, b = a_ctx.new_page(), b_ctx.new_page()
    a.goto(url)
    b.goto(url)
    for p in (a, b):
        p.wait_for_function("() => document.querySelector('[data-testid=chat-input]')")
    a.wait_for_timeout(500)  # both sockets connected
    b.get_by_test_id("chat-input").type("What does chloro", delay=30)
    a.get_by_test_id("typing").filter(has_text="typing").wait_for(timeout=10_000)
    shot(a, "05-other-typing")
    b.get_by_test_id("chat-input").fill("")
    ask(a, "What does chlorophyll absorb?")
    b.get_by_test_id("user-message").filter(has_text="chlorophyll").wait_for(timeout=30_000)
    wait_answer_done(b)
    wait_answer_done(a)
    text_a = last_answer(a).get_by_test_id("answer-body").inner_text()
    text_b = last_answer(b).get_by_test_id("answer-body").inner_text()
    assert text_a.strip() and text_a == text_b
    shot(b, "06-other-client-answer")
    watch.clean()
    a_ctx.close()
    b_ctx.close()


def test_stop_ends_the_answer_on_the_server(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx = context(browser, watch)
    page = ctx.new_page()
    page.goto(f"{server}/#/n/{course['id']}")
    ask(page, "Explain cellular respiration and what it releases.")
    page.wait_for_function(
        """() => { const all = document.querySelectorAll('[data-testid=assistant-message]');
                   const m = all[all.length - 1];
                   const b = m && m.querySelector('[data-testid=answer-body]');
                   return b && !b.querySelector('.muted'); }""",
        timeout=ANSWER_TIMEOUT,
    )
    page.get_by_test_id("chat-input").press("Escape")  # Esc stops, as the stop button does
    wait_answer_done(page)
    assert "Stopped" in last_answer(page).inner_text()
    cid = page.evaluate("location.hash").split("/c/")[1]
    conv = httpx.get(f"{server}/api/chat/conversations/{cid}").json()
    assert conv["generation"] is None
    stored = httpx.get(f"{server}/api/chat/conversations/{cid}/messages").json()["items"][-1]
    assert stored["status"] == "incomplete"
    shot(page, "07-stopped")
    watch.clean()
    ctx.close()


def test_an_unticked_source_is_never_used(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx = context(browser, watch)
    page = ctx.new_page()
    page.goto(f"{server}/#/n/{course['id']}")
    row = page.get_by_test_id("source-row").filter(has_text="biology.pdf")
    row.get_by_test_id("source-include").uncheck()
    sent: list[dict[str, Any]] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: sent.append(_json(payload))),
    )
    page.reload()  # the choice is kept
    assert not row.get_by_test_id("source-include").is_checked()
    ask(page, "What do mitochondria make?")
    wait_answer_done(page)
    message = next(f for f in sent if f.get("type") == "message")
    assert message["filters"]["document_ids"] == [course["txt"]]
    answer = last_answer(page)
    sources = answer.get_by_test_id("answer-source").all_inner_texts()
    assert all("biology.pdf" not in s for s in sources), sources
    for chip in answer.get_by_test_id("citation").all():
        assert "biology.pdf" not in (chip.get_attribute("aria-label") or "")
    # Search honours the same ticks.
    page.get_by_test_id("tab-search").click()
    page.get_by_test_id("search-input").fill("mitochondria ATP")
    page.get_by_test_id("search-input").press("Enter")
    page.wait_for_timeout(1500)
    assert all(
        "biology.pdf" not in t for t in page.get_by_test_id("search-result").all_inner_texts()
    )
    shot(page, "08-unticked")
    row.get_by_test_id("source-include").check()
    watch.clean()
    ctx.close()


def test_search_page_then_viewer(server: str, browser: Any, watch: Watch, course: dict[str, str]):
    ctx = context(browser, watch)
    page = ctx.new_page()
    page.goto(f"{server}/#/n/{course['id']}/search")
    page.get_by_test_id("search-input").fill("chlorophyll absorbs light")
    page.get_by_test_id("search-input").press("Enter")
    first = page.get_by_test_id("search-result").first
    first.wait_for()
    assert "biology.pdf" in first.inner_text() and "page 2" in first.inner_text()
    assert first.locator("mark").count() >= 1  # highlighted snippet
    first.click()
    viewer = page.get_by_test_id("source-viewer")
    viewer.get_by_test_id("highlight").first.wait_for(timeout=30_000)
    assert viewer.get_by_test_id("page-number").inner_text() == "Page 2 of 3"
    shot(page, "09-search-viewer")
    viewer.get_by_test_id("page-next").click()
    viewer.get_by_test_id("page-number").filter(has_text="Page 3 of 3").wait_for()
    watch.clean()
    ctx.close()


def test_phone_width_has_no_horizontal_overflow(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx = context(browser, watch, viewport={"width": 360, "height": 740}, is_mobile=True)
    page = ctx.new_page()
    page.goto(server)
    page.get_by_test_id("notebook-item").first.wait_for()
    no_horizontal_overflow(page)
    shot(page, "10-phone-home")
    convs = httpx.get(f"{server}/api/chat/conversations?notebook_id={course['id']}").json()
    with_sources = next(
        c["id"]
        for c in convs["items"]
        if any(
            m["sources"]
            for m in httpx.get(f"{server}/api/chat/conversations/{c['id']}/messages").json()[
                "items"
            ]
        )
    )
    page.goto(f"{server}/#/n/{course['id']}/c/{with_sources}")
    last_answer(page).wait_for()
    no_horizontal_overflow(page)
    shot(page, "11-phone-chat")
    page.get_by_test_id("answer-source").first.click()
    page.get_by_test_id("source-viewer").get_by_test_id("page").wait_for()
    no_horizontal_overflow(page)
    shot(page, "12-phone-viewer")
    page.goto(f"{server}/#/n/{course['id']}/search")
    page.get_by_test_id("search-input").fill("water")
    page.get_by_test_id("search-input").press("Enter")
    page.get_by_test_id("search-result").first.wait_for()
    no_horizontal_overflow(page)
    watch.clean()
    ctx.close()


def _json(payload: Any) -> dict[str, Any]:
    import json

    try:
        value = json.loads(payload if isinstance(payload, str) else payload.decode())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _plain(text: str) -> str:
    """Text without citation markers and spacing differences."""
    return re.sub(r"\s+", " ", re.sub(r"\s*\[[\d,\s\-–]+\]", "", text)).strip()
