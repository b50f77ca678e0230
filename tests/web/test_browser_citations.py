"""Citations and hostile content in a real browser, against a real `studyrag serve` whose chat
model is the Ollama-compatible test server with a fixed reply: the UI is the layer under
test, and a fixed answer is what makes "the citation [1] opens page 3" and "an answer full of
HTML renders as text" exact. Retrieval, storage and streaming are the real ones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends.llm.ollama_server import OllamaTestServer
from tests.conftest import free_port
from tests.web.harness import Watch, make_pdf, new_notebook, serve, shot, upload

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")

HOSTILE_ANSWER = (
    'Here is <script>alert("answer")</script> and <img src="http://example.com/x.png" '
    'onerror="alert(1)"> with [a link](javascript:alert(2)) and '
    '![pic](http://example.com/y.png) <b onmouseover="alert(3)">bold</b>: '
    "mitochondria make ATP [1]."
)
HOSTILE_DOC = (
    "# Hostile notes\n\n"
    "Mitochondria make ATP in this document too. <script>alert('doc')</script>\n\n"
    '<img src="http://example.com/z.png" onerror="alert(4)">\n\n'
    '<a href="javascript:alert(5)">click me</a> and [md link](javascript:alert(6))\n'
)


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[OllamaTestServer]:
    with OllamaTestServer(reply="Mitochondria make ATP [1].", token_delay=0.03) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_llm: OllamaTestServer) -> Iterator[str]:
    root = tmp_path_factory.mktemp("webcite")
    env = {
        "STUDYRAG_LLM__PROVIDER": "ollama",
        "STUDYRAG_LLM__OLLAMA_URL": fake_llm.url,
        "STUDYRAG_LLM__MODEL": "llama3.2",
    }
    with serve(root / "data", free_port(), root / "serve.log", env) as base:
        yield base


@pytest.fixture(scope="module")
def notebook(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("docs")
    nb = new_notebook(server, "Cited")
    (pdf_id,) = upload(server, nb, make_pdf(folder / "biology.pdf"))
    return {"id": nb, "pdf": pdf_id}


def open_page(browser: Any, watch: Watch, url: str) -> tuple[Any, Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    watch.attach(ctx)
    page = ctx.new_page()
    page.goto(url)
    return ctx, page


@contextmanager
def replying(fake_llm: OllamaTestServer, reply: str) -> Iterator[None]:
    """The chat model answers `reply` inside the block, the module's usual answer after."""
    fake_llm.behaviour.reply = reply
    try:
        yield
    finally:
        fake_llm.behaviour.reply = "Mitochondria make ATP [1]."


def ask(page: Any, question: str) -> Any:
    page.get_by_test_id("chat-input").fill(question)
    page.get_by_test_id("chat-input").press("Enter")
    answer = page.get_by_test_id("assistant-message").last
    page.wait_for_function(
        """() => { const all = document.querySelectorAll('[data-testid=assistant-message]');
                   const m = all[all.length - 1];
                   return m && m.dataset.status === 'complete'; }""",
        timeout=60_000,
    )
    return answer


def test_a_citation_opens_the_cited_page_with_the_passage_highlighted(
    server: str, browser: Any, watch: Watch, notebook: dict[str, str]
):
    ctx, page = open_page(browser, watch, f"{server}/#/n/{notebook['id']}")
    answer = ask(page, "What do mitochondria make?")
    chip = answer.get_by_test_id("citation").first
    assert chip.inner_text() == "1"
    chip.hover()
    card = page.get_by_test_id("citation-card")
    card.wait_for()
    assert "biology.pdf" in card.inner_text() and "page 3" in card.inner_text()
    assert "Mitochondria make ATP" in card.inner_text()
    shot(page, "20-citation-hover")
    chip.click()
    viewer = page.get_by_test_id("source-viewer")
    highlight = viewer.get_by_test_id("highlight").first
    highlight.wait_for(timeout=30_000)
    assert viewer.get_by_test_id("page-number").inner_text() == "Page 3 of 3"
    box = highlight.bounding_box()
    page_box = viewer.get_by_test_id("page").bounding_box()
    assert box and page_box and box["width"] > 20 and box["height"] > 5
    assert (
        page_box["x"] <= box["x"]
        and box["x"] + box["width"] <= page_box["x"] + page_box["width"] + 1
    )
    # The page was drawn by PDF.js (a canvas with pixels), not left blank.
    assert viewer.locator("canvas").count() == 1
    drawn = page.evaluate(
        """() => { const c = document.querySelector('[data-testid=source-viewer] canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let dark = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) dark++;
                   return dark; }"""
    )
    assert drawn > 1000
    download = viewer.get_by_test_id("download")
    assert download.get_attribute("href") == f"/api/documents/{notebook['pdf']}/file"
    shot(page, "21-viewer-highlight")
    watch.clean()
    ctx.close()


def test_hostile_document_and_answer_render_as_text(
    server: str,
    browser: Any,
    watch: Watch,
    notebook: dict[str, str],
    fake_llm: OllamaTestServer,
    tmp_path: Path,
):
    doc = tmp_path / "hostile.md"
    doc.write_text(HOSTILE_DOC, encoding="utf-8")
    nb = new_notebook(server, "Hostile")
    (doc_id,) = upload(server, nb, doc)
    with replying(fake_llm, HOSTILE_ANSWER):
        ctx, page = open_page(browser, watch, f"{server}/#/n/{nb}")
        answer = ask(page, "What do mitochondria make?")
    body = answer.get_by_test_id("answer-body")
    text = body.inner_text()
    assert '<script>alert("answer")</script>' in text  # shown, not run
    assert body.locator("script, img, a, iframe, [onerror], [onmouseover]").count() == 0
    assert "javascript:" not in body.inner_html()
    shot(page, "22-hostile-answer-as-text")
    # The document's passage, in the hover card, the source list and the viewer.
    chip = answer.get_by_test_id("citation").first
    chip.hover()
    # The card shows the checked quote (the supporting sentence), as text.
    card = page.get_by_test_id("citation-card")
    assert "Mitochondria make ATP in this document too." in card.inner_text()
    assert card.locator("script, img, a, iframe, [onerror]").count() == 0
    chip.click()
    viewer = page.get_by_test_id("source-viewer")
    viewer.get_by_test_id("highlight").wait_for(timeout=30_000)
    shown = viewer.get_by_test_id("doc-text").inner_text()
    assert "<script>alert('doc')</script>" in shown and "javascript:alert(5)" in shown
    assert viewer.locator("script, img, a[href^='javascript'], iframe").count() == 0
    # And in search results.
    page.get_by_test_id("tab-search").click()
    page.get_by_test_id("search-input").fill("script alert mitochondria")
    page.get_by_test_id("search-input").press("Enter")
    page.get_by_test_id("search-result").first.wait_for()
    results = page.get_by_test_id("search-result")
    assert results.locator("script, img, a").count() == 0
    page.wait_for_timeout(500)  # give any onerror a chance to fire
    shot(page, "23-hostile-search-and-viewer")
    assert httpx.get(f"{server}/api/documents/{doc_id}").status_code == 200
    watch.clean()  # no dialog, no request to another origin, no CSP violation
    ctx.close()


LONG_ANSWER = " ".join(
    f"Mitochondria make ATP, step {i} of the explanation, during cellular respiration [1]."
    for i in range(1, 9)
)


def test_reload_mid_answer_gets_the_rest_exactly_once(
    server: str, browser: Any, watch: Watch, notebook: dict[str, str], fake_llm: OllamaTestServer
):
    fake_llm.behaviour.reply = LONG_ANSWER
    fake_llm.behaviour.token_delay = 0.08  # ~8 s for the answer: time to reload in the middle
    try:
        ctx, page = open_page(browser, watch, f"{server}/#/n/{notebook['id']}")
        page.get_by_test_id("chat-input").fill("Explain what mitochondria make.")
        page.get_by_test_id("chat-input").press("Enter")
        page.wait_for_function(
            """() => { const all = document.querySelectorAll('[data-testid=assistant-message]');
                       const m = all[all.length - 1];
                       const b = m && m.querySelector('[data-testid=answer-body]');
                       return b && b.textContent.includes('step 2'); }""",
            timeout=60_000,
        )
        frames: list[dict[str, Any]] = []

        def on_ws(ws: Any) -> None:
            if "/ws/chat/" in ws.url:
                ws.on("framereceived", lambda payload: frames.append(_json(payload)))

        page.on("websocket", on_ws)
        page.reload()
        page.get_by_test_id("assistant-message").last.wait_for()
        assert page.get_by_test_id("stop").is_visible()  # the page knows the answer runs
        shot(page, "24-reloaded-mid-answer")
        page.wait_for_function(
            """() => { const all = document.querySelectorAll('[data-testid=assistant-message]');
                       const m = all[all.length - 1];
                       return m && m.dataset.status === 'complete'; }""",
            timeout=60_000,
        )
    finally:
        fake_llm.behaviour.reply = "Mitochondria make ATP [1]."
        fake_llm.behaviour.token_delay = 0.03
    seqs = [f["seq"] for f in frames if f.get("type") == "stream_chunk"]
    assert seqs and seqs == list(range(1, len(seqs) + 1)), seqs  # every token once, in order
    streamed = "".join(f["delta"] for f in frames if f.get("type") == "stream_chunk")
    assert streamed.split() == LONG_ANSWER.split()
    shown = page.get_by_test_id("assistant-message").last.get_by_test_id("answer-body")
    text = " ".join(shown.inner_text().split())
    for i in range(1, 9):
        assert text.count(f"step {i} ") == 1, text  # nothing lost, nothing twice
    assert len(page.get_by_test_id("assistant-message").all()) == 1
    shot(page, "25-after-reload")
    watch.clean()
    ctx.close()


def _json(payload: Any) -> dict[str, Any]:
    import json

    try:
        value = json.loads(payload if isinstance(payload, str) else payload.decode())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# One sentence the PDF supports (page 3) and one it says nothing about; attribution runs with
# the real embedder, so the second is the one the server flags.
MIXED_ANSWER = (
    "Mitochondria make **ATP**, the energy currency of the cell [1]. "
    "The Eiffel Tower was painted purple by Napoleon in 1802 [1]."
)
UNSUPPORTED = "The Eiffel Tower was painted purple by Napoleon in 1802"


def test_an_unsupported_sentence_is_marked_inline_also_after_reload(
    server: str, browser: Any, watch: Watch, notebook: dict[str, str], fake_llm: OllamaTestServer
):
    with replying(fake_llm, MIXED_ANSWER):
        ctx, page = open_page(browser, watch, f"{server}/#/n/{notebook['id']}")
        answer = ask(page, "What do mitochondria make?")
    cid = page.evaluate("location.hash").split("/c/")[1]
    stored = httpx.get(f"{server}/api/chat/conversations/{cid}/messages").json()["items"][-1]
    sentences = stored["metadata"]["attribution"]["sentences"]
    flagged = [stored["content"][s["start"] : s["end"]] for s in sentences if not s["supported"]]
    assert len(flagged) == 1 and UNSUPPORTED in flagged[0], sentences

    def check(answer: Any) -> None:
        marks = answer.get_by_test_id("unverified")
        marked = " ".join(marks.all_inner_texts())
        assert UNSUPPORTED in marked, marked
        assert "Mitochondria" not in marked  # the supported sentence is not marked
        assert marks.first.get_attribute("title") == "not found in the sources"
        style = marks.first.evaluate("e => getComputedStyle(e).textDecorationStyle")
        assert style == "dotted"
        body = answer.get_by_test_id("answer-body")
        # Markdown and the chip of the supported sentence are intact around the mark.
        assert body.locator("strong").inner_text() == "ATP"
        assert body.get_by_test_id("citation").count() >= 1
        assert "**" not in body.inner_text() and "\u2402" not in body.inner_text()
        assert "not found in the sources" in answer.get_by_test_id("unverified-note").inner_text()

    check(answer)
    answer.get_by_test_id("unverified").first.hover()
    shot(page, "26-unverified-sentence")
    page.reload()  # from the stored message
    answer = page.get_by_test_id("assistant-message").last
    answer.get_by_test_id("unverified").first.wait_for()
    check(answer)
    shot(page, "27-unverified-after-reload")
    watch.clean()
    ctx.close()


def test_ollama_pull_shows_its_progress_and_errors(
    server: str, browser: Any, watch: Watch, fake_llm: OllamaTestServer
):
    ctx, page = open_page(browser, watch, f"{server}/#/settings")
    page.get_by_test_id("pull-name").wait_for()
    assert page.get_by_test_id("pull-unavailable").count() == 0
    # Every value the page gives the bar (the events may come in one read, faster than a
    # MutationObserver sees them).
    page.evaluate(
        """() => { window.__pull = [];
          const d = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
          Object.defineProperty(HTMLProgressElement.prototype, 'value', {
            get() { return d.get.call(this); },
            set(v) { d.set.call(this, v);
                     if (this.dataset.testid === 'pull-progress') window.__pull.push(v); } }); }"""
    )
    fake_llm.behaviour.pull_steps = 8
    page.get_by_test_id("pull-name").fill("tinyllama")
    page.get_by_test_id("pull-start").click()
    page.get_by_test_id("pull-status").filter(has_text="tinyllama is downloaded").wait_for(
        timeout=30_000
    )
    values = page.evaluate("window.__pull")
    assert values[-1] == 100 and any(0 < v < 100 for v in values), values
    assert "tinyllama:latest" in fake_llm.behaviour.models
    # The list of chat models now offers it.
    page.get_by_test_id("chat-model-select").locator("option", has_text="tinyllama").wait_for(
        state="attached"
    )
    page.get_by_test_id("pull-status").scroll_into_view_if_needed()
    shot(page, "28-ollama-pulled")
    # A name Ollama's library does not have: its error, as message and hint.
    fake_llm.behaviour.pullable = False
    try:
        page.get_by_test_id("pull-name").fill("no-such-model")
        page.get_by_test_id("pull-start").click()
        error = page.get_by_test_id("pull").get_by_test_id("error")
        error.wait_for(timeout=30_000)
        assert "no-such-model" in error.inner_text() or "does not exist" in error.inner_text()
    finally:
        fake_llm.behaviour.pullable = True
    error.scroll_into_view_if_needed()
    shot(page, "29-ollama-pull-error")
    watch.clean()
    ctx.close()
