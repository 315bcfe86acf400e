"""LocalModelConfig validation, device/dtype choice, and fast, clear ModelUnavailable errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import adapters.local.loading as loading
from adapters.base import ModelUnavailable
from adapters.local import LocalModelConfig, LocalVLMAdapter


@pytest.mark.parametrize(
    "fields",
    [{"dtype": "float16"}, {"device": "tpu"}, {"max_context": 0}, {"threads": -1}],
)
def test_config_rejects_bad_values(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field; any is fine
        LocalModelConfig(model="x", **fields)  # type: ignore[arg-type]


def test_config_accepts_indexed_cuda_device() -> None:
    assert LocalModelConfig(device="cuda:1").device == "cuda:1"


def test_dtype_auto_follows_device_and_cpu_features(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loading.resolve_dtype("auto", cuda) is torch.bfloat16
    assert loading.resolve_dtype("float32", cuda) is torch.float32
    assert loading.resolve_dtype("auto", torch.device("mps")) is torch.float32
    monkeypatch.setattr(loading, "_cpu_has_native_bf16", lambda: True)
    assert loading.resolve_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(loading, "_cpu_has_native_bf16", lambda: False)
    assert loading.resolve_dtype("auto", cpu) is torch.float32
    assert loading.resolve_dtype("bfloat16", cpu) is torch.bfloat16


def test_explicit_device_is_used_as_given() -> None:
    assert loading.resolve_device("cpu") == torch.device("cpu")
    assert loading.resolve_device("cuda:1") == torch.device("cuda", 1)


def assert_fast_unavailable(config: LocalModelConfig, match: str) -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match=match) as info:
        LocalVLMAdapter(config)
    assert time.monotonic() - start < 5
    assert "Traceback" not in str(info.value)
    assert "Error" not in str(info.value)


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    assert_fast_unavailable(LocalModelConfig(model=str(tmp_path / "nope")), "No model found")


def test_empty_model_is_unavailable() -> None:
    assert_fast_unavailable(LocalModelConfig(), "No model configured")


def test_uncached_hub_id_with_local_files_only_is_unavailable() -> None:
    config = LocalModelConfig(model="vlm-gateway-tests/no-such-model", local_files_only=True)
    assert_fast_unavailable(config, "not in the local Hugging Face cache")


def test_uncached_hub_id_offline_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config = LocalModelConfig(model="vlm-gateway-tests/no-such-model")
    assert_fast_unavailable(config, "hf download")


def test_other_model_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert_fast_unavailable(LocalModelConfig(model=str(tmp_path)), "Qwen3-VL")


def test_capabilities_come_from_the_checkpoint(tiny_model_dir: Path) -> None:
    adapter = LocalVLMAdapter(
        LocalModelConfig(model=str(tiny_model_dir), max_context=4096, max_images=3, revision="r1")
    )
    caps = adapter.capabilities
    assert caps.model_id == tiny_model_dir.name
    assert caps.revision == "r1"
    assert caps.context_length == 4096
    assert caps.max_images == 3
    assert (caps.image_factor, caps.min_pixels, caps.max_pixels) == (32, 65536, 16777216)
    named = LocalVLMAdapter(LocalModelConfig(model=str(tiny_model_dir)), model_id="demo")
    assert named.capabilities.model_id == "demo"
    assert named.capabilities.context_length == 32768
