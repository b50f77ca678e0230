"""The default data directory: the user's, never ./data, and never the real one in tests."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from studyrag.config import Settings
from studyrag.data_dir import default_data_dir


def test_the_suite_never_touches_the_real_user_data_dir() -> None:
    # conftest.py points both the default and the user data directory into a temporary
    # folder; a test that builds Settings() without data_dir lands there.
    real = Path.home() / ".local" / "share" / "studyrag"
    paths = [Settings().data_dir, default_data_dir()]
    if sys.platform == "linux":  # where XDG_DATA_HOME decides the user data directory
        paths.append(Path(platformdirs.user_data_dir()))
    for path in paths:
        assert "studyrag-tests-" in str(path), path
        assert not path.is_relative_to(real), path


def test_default_is_the_user_data_dir_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STUDYRAG_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = Path(platformdirs.user_data_dir("studyrag", appauthor=False)).resolve()
    assert expected.is_relative_to(tmp_path)
    for cwd in (tmp_path, tmp_path / "elsewhere"):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        assert default_data_dir() == expected
        assert Settings().data_dir == expected


def test_env_and_argument_beat_the_default_and_find_the_saved_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDYRAG_DATA_DIR", str(tmp_path / "env"))
    assert Settings().data_dir == (tmp_path / "env").resolve()
    assert Settings(data_dir=tmp_path / "arg").data_dir == (tmp_path / "arg").resolve()
    # The saved TOML file is read from the same directory the settings resolve to.
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "config.toml").write_text('[llm]\nmodel = "from-env-dir"\n')
    assert Settings().llm.model == "from-env-dir"
    monkeypatch.delenv("STUDYRAG_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = Path(platformdirs.user_data_dir("studyrag", appauthor=False))
    default.mkdir(parents=True)
    (default / "config.toml").write_text('[llm]\nmodel = "from-default-dir"\n')
    assert Settings().llm.model == "from-default-dir"
