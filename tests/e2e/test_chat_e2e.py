"""Chat end to end with the real SmolLM2 model (short answers), the real MiniLM and stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from contextlib import aclosing
from pathlib import Path

import pytest

from studyrag.chat.engine import DoneEvent, StartEvent, TokenEvent
from studyrag.config import LLMSettings, Settings, load_settings
from studyrag.services import open_services
from tests.backends.llm.ollama_server import running_ollama_server
from tests.conftest import free_port
from tests.e2e.test_ingest_search import write_corpus

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("studyrag"))


def cli(
    *args: str, data_dir: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    base.update(
        {"HF_HUB_OFFLINE": "1", "STUDYRAG_LLM__MAX_TOKENS": "24", "STUDYRAG_LLM__N_THREADS": "2"}
    )
    base.update(env or {})
    return subprocess.run(
        [EXE, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=base,
        input=stdin,
        timeout=300,
    )


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with the three fixture documents ingested (once for the module)."""
    root = tmp_path_factory.mktemp("chat")
    data = root / "data"
    proc = cli("ingest", str(write_corpus(root / "notes")), data_dir=data)
    assert proc.returncode == 0, proc.stderr
    return data


def test_ask_json_then_continue_and_show_after_restart(corpus_dir: Path) -> None:
    first = cli("ask", "What does chlorophyll absorb?", "--json", data_dir=corpus_dir)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert set(answer) >= {"answer", "conversation_id", "message_id", "sources", "metadata"}
    assert answer["answer"].strip()
    top = answer["sources"][0]
    assert set(top) >= {
        "index",
        "document_id",
        "filename",
        "page",
        "section",
        "chunk_id",
        "score",
        "excerpt",
    }
    assert (top["index"], top["filename"], top["page"]) == (1, "biology.pdf", 2)
    meta = answer["metadata"]
    stats = meta["stats"]
    assert meta["provider"] == "llamacpp" and "SmolLM2" in meta["model"]
    assert stats["prompt_tokens"] > 0 and 0 < stats["completion_tokens"] <= 24
    assert stats["time_to_first_token"] > 0 and stats["tokens_per_second"] > 0
    assert meta["retrieval_ms"] > 0 and meta["search_mode"] == "hybrid"

    cid = answer["conversation_id"]
    second = cli(
        "ask", "And what does it reflect?", "--conversation", cid, "--json", data_dir=corpus_dir
    )
    assert second.returncode == 0, second.stderr
    follow = json.loads(second.stdout)
    assert follow["conversation_id"] == cid
    # The follow-up was rewritten from the history into a standalone query.
    assert "rewritten_query" in follow["metadata"]

    # A new process reads the same conversation back: it persisted.
    shown = cli("conversations", "show", cid, "--json", data_dir=corpus_dir)
    assert shown.returncode == 0, shown.stderr
    conv = json.loads(shown.stdout)
    assert conv["message_count"] == 4
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][0]["content"] == "What does chlorophyll absorb?"
    assert conv["messages"][1]["id"] == answer["message_id"]
    assert conv["messages"][1]["sources"][0]["page"] == 2
    assert conv["title"].startswith("What does chlorophyll absorb")
    listed = [
        json.loads(x)
        for x in cli("conversations", "list", "--json", data_dir=corpus_dir).stdout.splitlines()
    ]
    assert cid in {c["id"] for c in listed}


def test_ask_streams_and_lists_sources(corpus_dir: Path) -> None:
    proc = cli("ask", "When did the French Revolution begin?", data_dir=corpus_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Sources" in proc.stdout
    assert "[1] history.md — European History > The French Revolution" in proc.stdout
    # Into a pipe only the stored answer is written (markers as the server checked them),
    # not the raw streamed tokens.
    cid = proc.stdout.rsplit("conversation ", 1)[1].split()[0]
    conv = json.loads(cli("conversations", "show", cid, "--json", data_dir=corpus_dir).stdout)
    stored = conv["messages"][-1]["content"]
    assert " ".join(stored.split()) in " ".join(proc.stdout.split())
    assert proc.stdout.count(stored.split()[0]) >= 1


def test_nothing_relevant_says_so_without_the_model(corpus_dir: Path) -> None:
    proc = cli("ask", "What is the capital of Mongolia?", "--json", data_dir=corpus_dir)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["sources"] == []
    assert out["metadata"]["no_results"] is True
    assert "could not find" in out["answer"].lower()
    # It suggests what the documents do cover.
    assert "Plant Biology Notes" in out["answer"] or "European History" in out["answer"]


def test_chat_repl_keeps_the_conversation(corpus_dir: Path) -> None:
    proc = cli(
        "chat",
        data_dir=corpus_dir,
        stdin="What does chlorophyll absorb?\nWhy are leaves green?\n/quit\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Sources") >= 1
    cid = proc.stdout.rsplit("conversation ", 1)[1].split()[0]
    conv = json.loads(cli("conversations", "show", cid, "--json", data_dir=corpus_dir).stdout)
    assert conv["message_count"] == 4


def test_delete_conversation_then_it_is_gone(corpus_dir: Path) -> None:
    out = json.loads(cli("ask", "What is table salt?", "--json", data_dir=corpus_dir).stdout)
    cid = out["conversation_id"]
    assert cli("conversations", "delete", cid, data_dir=corpus_dir).returncode == 0
    gone = cli("conversations", "show", cid, "--json", data_dir=corpus_dir)
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["error_code"] == "CHAT_005"


async def test_cancel_mid_stream_keeps_partial_answer_and_question(corpus_dir: Path) -> None:
    settings = Settings(data_dir=corpus_dir, llm=LLMSettings(max_tokens=64, n_threads=2))
    async with open_services(settings, with_chat=True) as services:
        assert services.chat is not None
        events = services.chat.stream_message("Explain what chlorophyll does in plants.")
        seen: list[TokenEvent] = []
        start: StartEvent | None = None
        async with aclosing(events):
            async for event in events:
                if isinstance(event, StartEvent):
                    start = event
                if isinstance(event, TokenEvent):
                    seen.append(event)
                    if len(seen) == 3:
                        break
        assert start is not None
        await services.chat.drain()
        msgs = await services.conversations.list_messages(start.conversation["id"])
        user, assistant = msgs.items
        assert (user.role, user.status) == ("user", "complete")
        assert assistant.status == "incomplete"
        assert assistant.content == "".join(t.delta for t in seen)
        assert assistant.metadata["stats"]["finish_reason"] == "cancelled"
        # The model is free again: a new answer completes.
        result = await services.chat.process_message("What does chlorophyll absorb?", max_tokens=8)
        assert result.message["status"] == "complete"


async def test_stream_events_are_ordered(corpus_dir: Path) -> None:
    settings = Settings(data_dir=corpus_dir, llm=LLMSettings(max_tokens=16, n_threads=2))
    async with open_services(settings, with_chat=True) as services:
        assert services.chat is not None
        events = [e async for e in services.chat.stream_message("What makes ATP?")]
        kinds = [e.type for e in events]
        assert kinds[0] == "start" and kinds[1] == "sources" and kinds[-1] == "done"
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        assert [t.seq for t in tokens] == list(range(1, len(tokens) + 1))
        done = events[-1]
        assert isinstance(done, DoneEvent)
        assert done.message["status"] == "complete"


def test_ollama_provider_through_the_cli(corpus_dir: Path) -> None:
    with running_ollama_server(reply="Chlorophyll absorbs blue and red light [1].") as url:
        env = {
            "STUDYRAG_LLM__PROVIDER": "ollama",
            "STUDYRAG_LLM__OLLAMA_URL": url,
            "STUDYRAG_LLM__MODEL": "llama3.2",
        }
        out = cli("ask", "What does chlorophyll absorb?", "--json", data_dir=corpus_dir, env=env)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["metadata"]["provider"] == "ollama"
        assert answer["answer"] == "Chlorophyll absorbs blue and red light [1]."
        assert answer["sources"][0]["cited"] is True
        models = cli("models", "list", "--json", data_dir=corpus_dir, env=env)
        assert {json.loads(x)["name"] for x in models.stdout.splitlines()} >= {"llama3.2:latest"}
        missing = cli(
            "ask",
            "What does chlorophyll absorb?",
            "--json",
            data_dir=corpus_dir,
            env=env | {"STUDYRAG_LLM__MODEL": "nope"},
        )
        assert json.loads(missing.stdout)["error_code"] == "CHAT_002"
        assert "ollama pull nope" in missing.stdout or "models pull nope" in missing.stdout
    down = cli(
        "ask",
        "What does chlorophyll absorb?",
        "--json",
        data_dir=corpus_dir,
        env={
            "STUDYRAG_LLM__PROVIDER": "ollama",
            "STUDYRAG_LLM__OLLAMA_URL": f"http://127.0.0.1:{free_port()}",
        },
    )
    assert down.returncode == 1
    error = json.loads(down.stdout)
    assert error["error_code"] == "CHAT_001" and "ollama serve" in error["message"] + str(
        error["details"]
    )


def test_models_use_saves_and_is_loaded_at_start(tmp_path: Path) -> None:
    from studyrag.backends.llm.llamacpp import default_model_path

    gguf = default_model_path()
    assert gguf is not None
    (tmp_path / "models").mkdir()
    second = tmp_path / "models" / "second-model.gguf"
    second.symlink_to(gguf)
    down = {"STUDYRAG_LLM__OLLAMA_URL": f"http://127.0.0.1:{free_port()}"}
    proc = cli("models", "use", "second-model", data_dir=tmp_path, env=down)
    assert proc.returncode == 0, proc.stderr
    saved = tomllib.loads((tmp_path / "config.toml").read_text())
    assert saved["llm"] == {"provider": "llamacpp", "model_path": str(second)}
    os.environ.pop("STUDYRAG_LLM__MODEL_PATH", None)
    assert load_settings(data_dir=tmp_path).llm.model_path == str(second)
    listed = [
        json.loads(x)
        for x in cli("models", "list", "--json", data_dir=tmp_path, env=down).stdout.splitlines()
    ]
    active = [m["name"] for m in listed if m["role"] == "chat" and m["active"]]
    assert active == ["second-model"]
    # A path to a .gguf file outside the listed places works too.
    assert cli("models", "use", str(gguf), data_dir=tmp_path, env=down).returncode == 0
    before = (tmp_path / "config.toml").read_bytes()
    bad = cli("models", "use", str(tmp_path / "missing.gguf"), data_dir=tmp_path, env=down)
    assert bad.returncode == 1 and "CONFIG_006" in bad.stderr
    assert (tmp_path / "config.toml").read_bytes() == before
