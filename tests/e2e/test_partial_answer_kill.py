"""A real `studyrag serve` SIGKILLed mid-answer keeps the text its clients had already seen."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_durable_jobs import serve

pytestmark = pytest.mark.slow

NOTES = "\n\n".join(
    f"Lecture {i} covers the {topic} in detail: its causes, its course, its consequences and "
    f"the debates historians still have about the {topic}."
    for i, topic in enumerate(
        [
            "French Revolution",
            "Industrial Revolution",
            "unification of Germany",
            "Congress of Vienna",
            "Revolutions of 1848",
            "Crimean War",
        ]
    )
)


def test_sigkill_mid_answer_keeps_the_streamed_text_as_incomplete(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    log = tmp_path / "serve.log"
    with serve(data_dir, port, log) as proc:
        base = f"http://127.0.0.1:{port}"
        nb = httpx.post(f"{base}/api/notebooks", json={"name": "History"}).json()
        accepted = httpx.post(
            f"{base}/api/notebooks/{nb['id']}/documents",
            files=[("files", ("history.md", NOTES.encode()))],
            timeout=60,
        ).json()
        doc_id = accepted["documents"][0]["document_id"]
        deadline = time.monotonic() + 300
        while httpx.get(f"{base}/api/documents/{doc_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline, "the document was never indexed"
            time.sleep(0.2)
        cid = httpx.post(f"{base}/api/chat/conversations", json={"notebook_id": nb["id"]}).json()[
            "id"
        ]
        received: list[str] = []
        first: float | None = None
        body = {
            "message": "Explain in detail what each lecture covers, one paragraph per lecture.",
            "max_tokens": 400,
        }
        with httpx.stream(
            "POST", f"{base}/api/chat/stream/{cid}", json=body, timeout=300
        ) as response:
            assert response.status_code == 200
            event = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "token":
                    received.append(json.loads(line[5:])["delta"])
                    first = first or time.monotonic()
                    # Past the first checkpoint (1 s and 8 tokens), well before the answer ends.
                    if len(received) >= 24 and time.monotonic() - first > 2.5:
                        proc.send_signal(signal.SIGKILL)
                        break
                elif line.startswith("data:") and event in ("done", "error"):
                    pytest.fail(f"the answer ended ({event}) before the server could be killed")
        proc.wait(timeout=30)

    with serve(data_dir, port, log):
        messages = httpx.get(f"{base}/api/chat/conversations/{cid}/messages").json()["items"]
        answer = next(m for m in messages if m["role"] == "assistant")
        assert answer["status"] == "incomplete"
        seen = "".join(received)
        # What was stored is what the client had seen up to the last checkpoint: not empty,
        # and nothing the client never received.
        assert answer["content"].strip(), "the partial answer was lost"
        assert seen.startswith(answer["content"].rstrip()), (answer["content"], seen)
