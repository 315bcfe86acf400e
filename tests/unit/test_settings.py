from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from gateway.routing import CONFIG_DIR
from gateway.settings import Settings, SettingsError, load_settings


def test_defaults_file_matches_code_defaults() -> None:
    """config/gateway.toml documents every key with the value the code uses (keys whose
    default is "unset" appear as a commented-out line)."""
    text = (CONFIG_DIR / "gateway.toml").read_text()
    documented = tomllib.loads(text)
    assert load_settings(CONFIG_DIR / "gateway.toml", environ={}) == Settings()
    defaults = Settings()
    assert set(documented) == {f.name for f in dataclasses.fields(Settings)}
    for section, table in documented.items():
        values = vars(getattr(defaults, section))
        unset = {k for k, v in values.items() if v is None}
        assert set(table) == set(values) - unset, section
        for key in unset:
            assert f"# {key} = " in text, f"{section}.{key} is not documented"


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[model]\nid = "a"\n')
    env = {"VLM_GATEWAY_PORT": "9100", "VLM_GATEWAY_MODEL__DTYPE": "float32"}
    settings = load_settings(config, environ=env, overrides={"model": {"id": "b", "device": None}})
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"
    assert settings.model.dtype == "float32"
    assert settings.model.id == "b"
    assert settings.model.device == "auto"


def test_env_lists_and_bools() -> None:
    env = {"VLM_GATEWAY_API_KEYS": "k1, k2", "VLM_GATEWAY_LOGGING__LOG_PROMPTS": "true"}
    settings = load_settings(environ=env)
    assert settings.server.api_keys == ("k1", "k2")
    assert settings.logging.log_prompts is True


@pytest.mark.parametrize(
    "env",
    [
        {"VLM_GATEWAY_SERVER__NOPE": "1"},
        {"VLM_GATEWAY_NOPE": "1"},
        {"VLM_GATEWAY_PORT": "eighty"},
        {"VLM_GATEWAY_LOGGING__LOG_PROMPTS": "maybe"},
    ],
)
def test_unknown_or_malformed_values_are_named(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(environ=env)


def test_config_file_with_unknown_section(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text("[nope]\nx = 1\n")
    with pytest.raises(SettingsError, match="nope"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[server]\nbogus = 1\n", {}, "unknown setting 'server.bogus'"),
        ("", {"VLM_GATEWAY_GUARD__NOPE": "1"}, "unknown setting 'guard.nope'"),
        ("", {"VLM_GATEWAY_PORT": "eighty"}, "'server.port' has an invalid value 'eighty'"),
        ("[guard]\nmax_images = 'many'\n", {}, "'guard.max_images'"),
        ("[guard]\nfetch_timeout_s = true\n", {}, "'guard.fetch_timeout_s'"),
        ("[server]\napi_keys = ['a', 1]\n", {}, r"'server.api_keys\[1\]' has an invalid value 1"),
        ("[model]\naliases = 3\n", {}, "'model.aliases'"),
        ("[logging]\nformat = 'xml'\n", {}, "'logging.format'"),
        ("", {"VLM_GATEWAY_LOGGING__LOG_PROMPTS": "maybe"}, "'logging.log_prompts'"),
        ("[server]\nport = 1.5\n", {}, "'server.port'"),
    ],
)
def test_bad_keys_and_values_name_the_dotted_setting(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "g.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError, match=message):
        load_settings(config, environ=env)


def test_failed_section_checks_name_the_section() -> None:
    env = {"VLM_GATEWAY_METRICS__PATH": "metrics"}
    with pytest.raises(SettingsError, match=r"\[metrics\].*metrics.path must start with '/'"):
        load_settings(environ=env)
    with pytest.raises(SettingsError, match=r"\[guard\].*guard.max_images must be positive"):
        load_settings(environ={"VLM_GATEWAY_GUARD__MAX_IMAGES": "0"})


def test_env_strings_become_lists_and_numbers(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text("[guard]\ndenied_domains = ['a.example', 'b.example']\n")
    env = {
        "VLM_GATEWAY_SERVER__API_KEYS": "a, ,b,",
        "VLM_GATEWAY_LOGGING__SKIP_ROUTES": "/health",
        "VLM_GATEWAY_GUARD__FETCH_TIMEOUT_S": "2.5",
        "VLM_GATEWAY_GUARD__MAX_PIXELS": "1000000",
        "VLM_GATEWAY_PORT": " 9000 ",
        "VLM_GATEWAY_HOST": "::1",
    }
    settings = load_settings(config, environ=env)
    assert settings.server.api_keys == ("a", "b")
    assert settings.logging.skip_routes == ("/health",)
    assert settings.guard.denied_domains == ("a.example", "b.example")
    assert settings.guard.fetch_timeout_s == 2.5
    assert settings.guard.max_pixels == 1_000_000
    assert settings.server.port == 9000
    assert settings.server.host == "::1"
    assert load_settings(environ={"VLM_GATEWAY_SERVER__API_KEYS": ""}).server.api_keys == ()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *((word, True) for word in ("1", "true", "yes", "on", "TRUE", "Yes", "On")),
        *((word, False) for word in ("0", "false", "no", "off", "False", "NO", "OFF")),
    ],
)
def test_env_bools_accept_the_usual_words(raw: str, expected: bool) -> None:
    settings = load_settings(environ={"VLM_GATEWAY_ROUTER__SHAPE_PROMPTS": raw})
    assert settings.router.shape_prompts is expected
