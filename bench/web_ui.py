"""The web interface's own cost, in Debian's chromium against a real `studyrag serve` (SmolLM2,
MiniLM): page load to interactive chat, send to first token painted vs first token received
on the WebSocket, and the JavaScript + CSS the page transfers (PDF.js apart: it loads only
when a PDF is opened).

    python -m bench.web_ui [--questions 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.web.harness import launch, make_pdf, new_notebook, serve, upload

from bench.common import write_result

QUESTIONS = [
    "What do mitochondria make?",
    "What does chlorophyll absorb?",
    "What controls what enters the cell?",
    "Where is the genetic material kept?",
    "Why are leaves green?",
    "What do ribosomes build?",
    "What does respiration release?",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {"STUDYRAG_LLM__MAX_TOKENS": "16", "STUDYRAG_LLM__N_THREADS": "2"}
        with serve(root / "data", free_port(), root / "serve.log", env) as base:
            nb = new_notebook(base, "Bench")
            upload(base, nb, make_pdf(root / "biology.pdf"))
            with sync_playwright() as p:
                browser = launch(p)
                loads = []
                for _ in range(5):  # a new page each time: a real load, not a hash change
                    page = browser.new_page()
                    page.goto(f"{base}/#/n/{nb}")
                    page.get_by_test_id("source-row").first.wait_for()
                    page.get_by_test_id("chat-input").wait_for()
                    loads.append(page.evaluate("performance.now()"))
                    if len(loads) < 5:
                        page.close()
                resources = page.evaluate(
                    """() => performance.getEntriesByType('resource')
                         .filter(r => /\\.(m?js|css)$/.test(new URL(r.name).pathname))
                         .map(r => [new URL(r.name).pathname, r.encodedBodySize])"""
                )
                runs = [ask(page, q) for q in QUESTIONS[: args.questions]]
                browser.close()
    own = {path: size for path, size in resources if "/pdfjs/" not in path}
    painted = [r["paint_ms"] for r in runs]
    result = {
        "what": "web UI in chromium vs a real studyrag serve (SmolLM2-135M, 2 threads)",
        # navigation start to the sources listed (notebook WebSocket ready) and the box ready
        "page_load_to_interactive_ms": {
            "median": round(statistics.median(loads), 1),
            "runs": [round(x, 1) for x in loads],
        },
        "send_to_first_token_ws_ms": [round(r["ws_ms"], 1) for r in runs],
        "first_token_ws_to_painted_ms": {
            "median": round(statistics.median(painted), 2),
            "max": round(max(painted), 2),
            "runs": [round(x, 2) for x in painted],
        },
        "js_css_bytes_excluding_pdfjs": sum(own.values()),
        "files": own,
        "compression": "none (served uncompressed)",
    }
    write_result("web_ui", result)
    print(result)


def ask(page: Any, question: str) -> dict[str, float]:
    page.evaluate("window.__studyragPerf.length = 0")
    page.get_by_test_id("chat-input").fill(question)
    page.get_by_test_id("chat-input").press("Enter")
    page.wait_for_function(
        "() => window.__studyragPerf.some(e => e.ev === 'first_token_painted')", timeout=120_000
    )
    page.wait_for_function(
        """() => { const all = document.querySelectorAll('[data-testid=assistant-message]');
                   const m = all[all.length - 1];
                   return m && ['complete', 'error'].includes(m.dataset.status); }""",
        timeout=120_000,
    )
    ev = {e["ev"]: e["t"] for e in page.evaluate("window.__studyragPerf")}
    return {
        "ws_ms": ev["first_token_ws"] - ev["send"],
        "paint_ms": ev["first_token_painted"] - ev["first_token_ws"],
    }


if __name__ == "__main__":
    main()
