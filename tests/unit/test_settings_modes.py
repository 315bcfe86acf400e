"""[model] quantize, quantize_vision, quantize_head and compile: read from files and the
environment, and the combinations that can never work refused with a message naming the section
and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ModelSettings, SettingsError, load_settings


def test_modes_are_off_by_default() -> None:
    model = load_settings(environ={}).model
    assert (model.quantize, model.quantize_vision, model.compile) == ("none", False, False)


def test_modes_from_the_environment() -> None:
    env = {
        "VLM_GATEWAY_MODEL__QUANTIZE": "int8",
        "VLM_GATEWAY_MODEL__QUANTIZE_VISION": "yes",
        "VLM_GATEWAY_MODEL__QUANTIZE_HEAD": "true",
        "VLM_GATEWAY_MODEL__COMPILE": "on",
        "VLM_GATEWAY_DTYPE": "float32",
    }
    model = load_settings(environ=env).model
    assert (model.quantize, model.quantize_vision, model.compile) == ("int8", True, True)
    assert model.quantize_head


def test_modes_from_a_file(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('[model]\nquantize = "int8"\ndevice = "cpu"\ncompile = true\n')
    model = load_settings(config, environ={}).model
    assert (model.quantize, model.device, model.compile) == ("int8", "cpu", True)


def test_an_unknown_quantization_is_named() -> None:
    with pytest.raises(SettingsError, match=r"'model\.quantize' has an invalid value 'int4'"):
        load_settings(environ={"VLM_GATEWAY_MODEL__QUANTIZE": "int4"})


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {"VLM_GATEWAY_MODEL__QUANTIZE": "int8", "VLM_GATEWAY_DTYPE": "bfloat16"},
            r"\[model\].*model.quantize = int8 quantizes float32 weights: set model.dtype",
        ),
        (
            {"VLM_GATEWAY_MODEL__QUANTIZE_VISION": "true", "VLM_GATEWAY_DTYPE": "bfloat16"},
            r"\[model\].*model.quantize_vision quantizes float32 weights",
        ),
        (
            {"VLM_GATEWAY_MODEL__QUANTIZE_HEAD": "true"},
            r"\[model\].*model.quantize_head needs model.quantize = int8",
        ),
        (
            {"VLM_GATEWAY_MODEL__QUANTIZE": "int8", "VLM_GATEWAY_DEVICE": "cuda:0"},
            r"\[model\].*runs on the CPU only, not on cuda:0",
        ),
        (
            {"VLM_GATEWAY_MODEL__QUANTIZE_VISION": "1", "VLM_GATEWAY_DEVICE": "mps"},
            r"\[model\].*runs on the CPU only, not on mps",
        ),
    ],
)
def test_int8_off_the_float32_cpu_is_refused(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(environ=env)


def test_what_may_work_is_left_to_the_model_load() -> None:
    # auto may resolve to float32 on the CPU: the adapter decides when it loads.
    assert ModelSettings(quantize="int8", quantize_vision=True).dtype == "auto"
    assert ModelSettings(quantize="int8", device="cpu", dtype="float32").device == "cpu"
    # compile and the float dtypes or devices are independent.
    assert ModelSettings(compile=True, dtype="bfloat16", device="cuda").compile
