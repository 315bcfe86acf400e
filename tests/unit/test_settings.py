from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.settings import CONFIG_DIR, Settings, SettingsError, load_settings


def test_defaults_file_matches_code_defaults() -> None:
    """config/gateway.toml documents every key with the value the code uses."""
    documented = tomllib.loads((CONFIG_DIR / "gateway.toml").read_text())
    assert load_settings(CONFIG_DIR / "gateway.toml", environ={}) == Settings()
    defaults = Settings()
    for section, table in documented.items():
        assert set(table) == set(vars(getattr(defaults, section))), section


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
