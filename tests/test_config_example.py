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


def test_the_apis_example_loads(tmp_path: Path) -> None:
    from ratedispatch.apis import load_apis

    token = tmp_path / "llm_token"
    token.write_text("t")
    shops = tmp_path / "shop-tokens"
    shops.write_text("acme=shop-token-1\n")
    text = (EXAMPLE.parent / "apis.example.toml").read_text()
    path = tmp_path / "apis.toml"
    text = text.replace("/run/secrets/llm_token", str(token))
    path.write_text(text.replace("/run/secrets/shop-tokens", str(shops)))
    settings = Settings(_env_file=None, api_base_url="https://api.example.com")
    env = {"GITHUB_TOKEN": "t", "SHOPIFY_APP_TOKEN": "s", "LLM_KEY_1": "1", "LLM_KEY_2": "2",
           "LLM_KEY_3": "3"}  # fmt: skip
    apis = load_apis(settings, path, env)
    assert list(apis) == ["default", "github", "llm", "shopify", "llm-pool"]
    assert str(apis["github"].settings.limit_terms) == "5000/1h, 10/1s burst 5"
    assert apis["llm"].settings.rate_key == "{llm}:rate"
    shopify = apis["shopify"]
    assert (shopify.settings.key_field, str(shopify.settings.key_terms)) == ("shop", "2/1s, 40/1m")
    assert shopify.key_tokens == {"acme": "shop-token-1"}
    assert [variable for variable, _ in apis["llm-pool"].pool] == [
        "LLM_KEY_1",
        "LLM_KEY_2",
        "LLM_KEY_3",
    ]
