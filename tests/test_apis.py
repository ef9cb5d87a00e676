"""The APIs of a fleet from RATEDISPATCH_CONFIG: a valid file gives each API its own settings; a
bad one gives one line naming the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratedispatch.apis import load_apis
from ratedispatch.errors import ConfigError
from ratedispatch.settings import Settings

ENV = Settings(api_base_url="https://default.example", api_token="env-token", rate_limit=100)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "apis.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_apis(ENV, path, environ or {})
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"RATEDISPATCH_CONFIG={path}: ")
    return line


def test_without_a_file_there_is_the_default_api_as_the_environment_sets_it() -> None:
    apis = load_apis(ENV, None, {})
    assert list(apis) == ["default"] and apis["default"].settings is ENV


def test_each_api_gets_its_own_base_url_token_limits_and_keys(tmp_path: Path) -> None:
    (tmp_path / "llm").write_text("llm-token\n")
    path = config(
        tmp_path,
        """
        [apis.github]
        base_url = "https://api.github.com/"
        token_env = "GITHUB_TOKEN"
        limits = "5000/1h, 10/1s burst 2"
        max_in_flight = 20

        [apis.llm]
        base_url = "https://llm.example/v1"
        token_file = "%s"
        limits = "60/1m"
        http_timeout_seconds = 30
        max_attempts = 2
        rate_key = "{llm}:rate"
        """
        % (tmp_path / "llm"),
    )
    apis = load_apis(ENV, path, {"GITHUB_TOKEN": "gh-token"})
    assert list(apis) == ["default", "github", "llm"]
    github, llm = apis["github"].settings, apis["llm"].settings
    assert github.api_base_url == "https://api.github.com"
    assert github.api_token is not None and github.api_token.get_secret_value() == "gh-token"
    assert str(github.limit_terms) == "5000/1h, 10/1s burst 2" and github.max_in_flight == 20
    assert github.rate_key == "rate:external:api:github"
    assert (github.http_timeout_seconds, github.max_attempts) == (10, 5)  # the environment's
    assert llm.api_token is not None and llm.api_token.get_secret_value() == "llm-token"
    assert (llm.http_timeout_seconds, llm.max_attempts, llm.rate_key) == (30, 2, "{llm}:rate")
    # What is not the API's own is the fleet's: the stream, the group, the Redis.
    assert (llm.stream, llm.group, llm.redis_url) == (ENV.stream, ENV.group, ENV.redis_url)
    assert apis["default"].settings is ENV


def test_an_api_from_the_file_never_carries_the_environments_token(tmp_path: Path) -> None:
    path = config(tmp_path, '[apis.open]\nbase_url = "https://open.example"\nlimits = "5/1s"\n')
    assert load_apis(ENV, path, {})["open"].settings.api_token is None


def test_the_file_may_override_the_default_api(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '[apis.default]\nbase_url = "https://other.example"\nlimits = "10/1s"\n'
        'token_env = "DEFAULT_TOKEN"\n',
    )
    default = load_apis(ENV, path, {"DEFAULT_TOKEN": "file-token"})["default"].settings
    assert default.api_base_url == "https://other.example"
    assert str(default.limit_terms) == "10/1s" and default.rate_key == ENV.rate_key
    assert default.api_token is not None and default.api_token.get_secret_value() == "file-token"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "ten/1m"\n',
         "[apis.github] limits='ten/1m': term 'ten/1m'"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "100/0s"\n',
         "[apis.github] limits='100/0s'"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s burst 0"\n',
         "[apis.github] limits='5/1s burst 0'"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimit = "5/1s"\n',
         "[apis.github] limit: not a key an API may have (known: base_url"),
        ('[apis.github]\nbase_url = "ftp://a.example"\nlimits = "5/1s"\n',
         "[apis.github] base_url='ftp://a.example': expected an http:// or https:// URL"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\nmax_attempts = 0\n',
         "[apis.github] max_attempts=0"),
        ('[apis.github]\nlimits = "5/1s"\n', "[apis.github] has no base_url"),
        ('[apis.github]\nbase_url = "https://a.example"\n', "[apis.github] has no limits"),
        ('[apis.GitHub]\nbase_url = "https://a.example"\nlimits = "5/1s"\n',
         "[apis.GitHub] is not a valid API name"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntoken = "secret"\n',
         "[apis.github] token: not a key an API may have"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntoken_env = "GH"\n',
         "[apis.github] token_env='GH': that variable is not set"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntoken_env = "GH"\n'
         'token_file = "/x"\n', "[apis.github] sets both token_env and token_file"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\n'
         'token_file = "/no/such/file"\n',
         "[apis.github] token_file='/no/such/file': cannot be read"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nrate_key = "k"\n'
         '[apis.b]\nbase_url = "https://b.example"\nlimits = "5/1s"\nrate_key = "k"\n',
         "[apis.b] its key 'k' is also a key of [apis.a]"),
        ('[apis.terms]\nbase_url = "https://a.example"\nlimits = "5/1s"\n',
         "[apis.terms] its key 'rate:external:api:terms' is also a key of [apis.default]"),
        ('[APIS.x]\nbase_url = "https://a.example"\nlimits = "5/1s"\n'
         '[apis.y]\nbase_url = "https://b.example"\nlimits = "5/1s"\n',
         "APIS is not a table this file may have"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\nmax_attempts = true\n',
         "[apis.github] max_attempts=True"),
        ('[apis.github]\nbase_url = "https://a.example"\nlimits = "5/1s"\nmax_in_flight = "7"\n',
         "[apis.github] max_in_flight='7'"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nhttp_timeout_seconds = 90\n',
         "[apis.a] http_timeout_seconds=90 must be below RATEDISPATCH_RECLAIM_IDLE_SECONDS=60"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nkey_limits = "5/0s"\n',
         "[apis.a] key_limits='5/0s'"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nkey_field = "priority"\n',
         "[apis.a] key_field='priority': 'priority' is a field ratedispatch reads itself"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nkey_field = "tenant"\n'
         'key_weights = { gold = 0 }\n',
         "[apis.a] key_weights={'gold': 0}: the weight of key 'gold' must be above 0"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nkey_field = "t"\n'
         'tokens_file = "/no/such/file"\n',
         "[apis.a] tokens_file='/no/such/file': cannot be read"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nkey_limits = "5/1s"\n',
         "[apis.a] sets key_limits but no key_field"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntokens_env = ["K1"]\n'
         'token_env = "K2"\n', "[apis.a] sets both token_env and tokens_env"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntokens_env = ["K1"]\n',
         "[apis.a] tokens_env: 'K1': that variable is not set"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntokens_env = ["K 1"]\n',
         "[apis.a] tokens_env=['K 1']: 'K 1' is not an environment variable's name"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntokens_env = ["K", "K"]\n',
         "[apis.a] tokens_env=['K', 'K']: a variable is named twice"),
        ('[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntokens_env = []\n',
         "[apis.a] tokens_env=[]"),
        ("[apis.github\n", "not valid TOML: "),
        ("[workers]\nn = 1\n", "workers is not a table this file may have"),
        ("apis = 3\n", "apis: "),
    ],
)  # fmt: skip
def test_a_bad_file_is_one_line_naming_the_table_and_the_key(
    tmp_path: Path, text: str, says: str
) -> None:
    assert says in refused(tmp_path, text)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_apis(ENV, tmp_path / "nope.toml", {})


def test_a_bad_value_in_an_error_line_has_its_password_masked(tmp_path: Path) -> None:
    line = refused(tmp_path, '[apis.a]\nbase_url = "ftp://u:s3cret@a.example"\nlimits = "5/1s"\n')
    assert "s3cret" not in line and "***" in line


def test_a_token_with_a_line_break_is_refused_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first-s3cret\nsecond-s3cret\n")
    line = refused(
        tmp_path,
        '[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntoken_file = "token"\n',
    )
    assert "line breaks" in line and "s3cret" not in line


def test_a_relative_token_file_is_found_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("beside\n")
    monkeypatch.chdir("/")
    path = config(
        tmp_path,
        '[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\ntoken_file = "token"\n',
    )
    token = load_apis(ENV, path, {})["a"].settings.api_token
    assert token is not None and token.get_secret_value() == "beside"


def test_an_api_has_its_own_key_field_limits_weights_and_tokens(tmp_path: Path) -> None:
    (tmp_path / "shops").write_text("# shop=token\nshop-1=tok-1\nshop-2 = tok-2\n")
    path = config(
        tmp_path,
        """
        [apis.shopify]
        base_url = "https://shopify.example"
        limits = "1000/1s"
        key_field = "shop"
        key_limits = "2/1s, 40/1m"
        key_weights = { shop-1 = 3, shop-2 = 0.5 }
        tokens_file = "shops"
        """,
    )
    env = ENV.model_copy(update={"key_field": "tenant", "key_limits": "5/1s"})
    apis = load_apis(env, path, {})
    shopify = apis["shopify"]
    assert shopify.settings.key_field == "shop"
    assert str(shopify.settings.key_terms) == "2/1s, 40/1m"
    assert shopify.settings.key_weights == {"shop-1": 3.0, "shop-2": 0.5}
    assert shopify.key_tokens == {"shop-1": "tok-1", "shop-2": "tok-2"}
    assert "tok-1" not in repr(shopify)
    # The environment's key settings are the default API's own, never another's.
    assert apis["default"].settings.key_field == "tenant"
    path.write_text('[apis.plain]\nbase_url = "https://p.example"\nlimits = "5/1s"\n')
    plain = load_apis(env, path, {})["plain"].settings
    assert (plain.key_field, plain.key_limits, plain.key_weights) == (None, None, {})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a=s3cr3t-1\na=s3cr3t-2\n", "line 2: key 'a' has a token already"),
        ("s3cr3t-3\n", "line 1: expected key=token"),
        ("a=\n", "line 1: expected key=token"),
        ("a=s3cr3t 4\n", "line 1: the token has spaces or control characters"),
    ],
)
def test_a_bad_tokens_file_names_the_line_and_never_shows_a_token(
    tmp_path: Path, text: str, says: str
) -> None:
    (tmp_path / "tokens").write_text(text)
    line = refused(
        tmp_path,
        '[apis.a]\nbase_url = "https://a.example"\nlimits = "5/1s"\nkey_field = "t"\n'
        'tokens_file = "tokens"\n',
    )
    assert says in line and "[apis.a] tokens_file=" in line
    assert "s3cr3t" not in line
