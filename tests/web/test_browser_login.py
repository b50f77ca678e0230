"""Sign-in in a real browser against a real multi-user `studyrag serve`: the first admin's
one-time setup link, login, logout, and a second user who sees none of the first's
notebooks. Screenshots in test-artifacts/."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.web.harness import EXE, Watch, launch, serve, shot

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path_factory.mktemp("web-login")
    env = {"STUDYRAG_AUTH__MODE": "multi-user", "STUDYRAG_LLM__N_THREADS": "2"}
    with serve(root / "data", free_port(), root / "serve.log", env) as base:
        yield base, root / "data", root / "serve.log"


def setup_link(log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"http://\S+/#/setup/\S+", log.read_text())
        if found:
            return found.group(0)
        time.sleep(0.2)
    raise AssertionError(log.read_text()[-2000:])


def test_setup_login_logout_and_a_second_user(server: tuple[str, Path, Path]) -> None:
    base, data_dir, log = server
    link = setup_link(log)
    assert link.startswith(base)
    watch = Watch(base)
    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        ctx = browser.new_context()
        watch.attach(ctx)
        page = ctx.new_page()
        # Without a session the page asks for a login.
        page.goto(base + "/")
        page.get_by_test_id("login").wait_for()
        shot(page, "login-page")
        # The one-time setup link makes the first admin and signs them in.
        page.goto(link)
        page.get_by_test_id("setup-name").fill("teacher")
        page.get_by_test_id("setup-password").fill("teacher-password")
        page.get_by_test_id("setup-submit").click()
        page.get_by_test_id("notebook-new").wait_for()
        assert page.get_by_test_id("logout").inner_text() == "Sign out teacher"
        page.get_by_test_id("notebook-new").click()
        page.get_by_test_id("notebook-name-input").fill("Teacher only")
        page.get_by_test_id("notebook-create").click()
        page.get_by_test_id("drop-zone").wait_for()
        # An upload (XHR, cookie) and its progress over /ws/notebooks (cookie): both signed in.
        page.get_by_test_id("upload-input").set_input_files(
            files=[
                {
                    "name": "notes.md",
                    "mimeType": "text/markdown",
                    "buffer": b"# Cells\n\nMitochondria make ATP for the cell.\n",
                }
            ]
        )
        row = page.get_by_test_id("source-row").filter(has_text="notes.md")
        row.get_by_test_id("source-status").filter(has_text="Done").wait_for(timeout=120_000)
        shot(page, "login-teacher-workspace")
        page.goto(base + "/#/")
        page.get_by_test_id("logout").click()
        page.get_by_test_id("login").wait_for()
        # A wrong password is told, without saying whether the name exists.
        page.get_by_test_id("login-name").fill("teacher")
        page.get_by_test_id("login-password").fill("not-the-password")
        page.get_by_test_id("login-submit").click()
        error = page.get_by_test_id("error")
        error.wait_for()
        assert "Wrong user name or password" in error.inner_text()
        shot(page, "login-wrong-password")

        made = subprocess.run(
            [EXE, "users", "create", "student", "--password-stdin", "--data-dir", str(data_dir)],
            input="student-password\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        other = browser.new_context()
        watch.attach(other)
        student = other.new_page()
        student.goto(base + "/")
        student.get_by_test_id("login-name").fill("student")
        student.get_by_test_id("login-password").fill("student-password")
        student.get_by_test_id("login-submit").click()
        student.get_by_text("Welcome to StudyRAG").wait_for()
        assert "Teacher only" not in student.content()
        shot(student, "login-student-home")

        # Shared with everyone as viewer: the student sees it marked so, and the page offers
        # reading and chatting, not adding, removing, renaming or deleting.
        key = subprocess.run(
            [EXE, "keys", "create", "--user", "teacher", "--scopes", "read,chat,admin", "--json",
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        teacher = {"Authorization": f"Bearer {json.loads(key.stdout)['key']}"}
        found = httpx.get(f"{base}/api/notebooks", params={"ref": "Teacher only"}, headers=teacher)
        shared_id = found.json()["items"][0]["id"]
        shared = httpx.post(
            f"{base}/api/notebooks/{shared_id}/shares",
            json={"user": "*", "role": "viewer"},
            headers=teacher,
        )
        assert shared.status_code == 201, shared.text
        student.goto(base + "/#/")
        student.reload()
        item = student.get_by_test_id("notebook-item").filter(has_text="Teacher only")
        item.get_by_test_id("notebook-role").filter(has_text="viewer").wait_for()
        assert item.get_by_test_id("notebook-rename").count() == 0
        assert item.get_by_test_id("notebook-delete").count() == 0
        student.goto(f"{base}/#/n/{shared_id}")
        row = student.get_by_test_id("source-row").filter(has_text="notes.md")
        row.get_by_test_id("source-status").filter(has_text="Done").wait_for()
        student.get_by_test_id("viewer-note").wait_for()
        assert student.get_by_test_id("drop-zone").count() == 0
        assert row.get_by_test_id("source-delete").count() == 0
        shot(student, "login-student-shared-viewer")
        browser.close()
    watch.clean()
