"""The documented example `.env` names every setting, and loads as it stands."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratedispatch.settings import Settings, load_settings

EXAMPLE = Path(__file__).parent.parent / "config" / ".env.example"


def test_the_example_documents_every_setting() -> None:
    text = EXAMPLE.read_text()
    for name in Settings.model_fields:
        assert f"RATEDISPATCH_{name.upper()}=" in text, name


def test_the_example_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(EXAMPLE.read_text())
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.api_base_url == "https://api.example.com"
    assert settings.rate_limit == 100
