"""Shared fixtures. Nothing here may reach a hub: models load from installed packages."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tests must never pick up a developer's configuration or data.
for _key in [k for k in os.environ if k.startswith("STUDYRAG_")]:
    del os.environ[_key]
# Nor write into the user's data directory (the default when no data_dir is given): the
# default and the user data directory itself point into a temporary folder, for this
# process and every CLI subprocess it starts.
_TEST_HOME = tempfile.mkdtemp(prefix="studyrag-tests-")
atexit.register(shutil.rmtree, _TEST_HOME, ignore_errors=True)
os.environ["XDG_DATA_HOME"] = os.path.join(_TEST_HOME, "xdg-data")
os.environ["STUDYRAG_DATA_DIR"] = os.path.join(_TEST_HOME, "default-data-dir")

import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property tests draw the same examples on every run (a suite must not fail on another
# commit's dice); `HYPOTHESIS_PROFILE=explore pytest tests/…properties…` draws new ones.
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 embedder, loaded once per session."""
    from studyrag.backends.embeddings.sentence_transformers import SentenceTransformersEmbedder
    from studyrag.config import EmbeddingsSettings

    return SentenceTransformersEmbedder(EmbeddingsSettings())
