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
