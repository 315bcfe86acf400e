"""The CPU speed modes on the tiny random Qwen3-VL: each loads, serves a chat with an image and
says what it applied; int8 changes the numbers a little and compile not at all; every cache key
names the mode; what cannot apply stops the start with a message that says what to set."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

import adapters.local.compiling as compiling
import adapters.local.loading as loading
from adapters.base import ImageInput, ModelUnavailable, collect
from adapters.local import CACHES_OFF, LocalModelConfig, LocalVLMAdapter
from tests.integration.local_adapter_support import CONVERSATIONS, image, request
from tests.reference import Reference

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        "x86" not in torch.backends.quantized.supported_engines, reason="no x86 int8 engine"
    ),
]

MODES: dict[str, dict[str, Any]] = {
    "int8": {"quantize": "int8"},
    "int8_vision": {"quantize_vision": True},
    "int8_all": {"quantize": "int8", "quantize_vision": True, "quantize_head": True},
    "compile": {"compile": True},
    "compile_int8": {"compile": True, "quantize": "int8"},
}
KEYS = {
    "plain": "int8=none;prepack=on;compile=off",
    "int8": "int8=lm;prepack=on;compile=off",
    "int8_vision": "int8=vision;prepack=on;compile=off",
    "int8_all": "int8=lm+vision+head;prepack=off;compile=off",
    "compile": "int8=none;prepack=on;compile=on",
    "compile_int8": "int8=lm;prepack=on;compile=on",
}
LOGGED = {
    "int8": "int8 dynamic quantization (per-channel weights, x86 engine): 14 Linear layers of the "
    "language model (lm_head kept float32)",
    "int8_vision": "int8 dynamic quantization (per-channel weights, x86 engine): 14 Linear "
    "layers of the vision encoder",
    "int8_all": "14 Linear layers of the language model (lm_head int8 too) and 14 Linear layers "
    "of the vision encoder",
    "compile": "compile on: torch.compile (inductor, dynamic shapes) of 9 RMSNorms and 2 MLP "
    "activations of the language model",
    "compile_int8": "compile on: torch.compile",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def started(tiny_model_dir: Path) -> AsyncIterator[dict[str, LocalVLMAdapter]]:
    """One started adapter per mode (and a plain float32 one), shared by the module's tests."""
    adapters: dict[str, LocalVLMAdapter] = {}
    try:
        for name, fields in {"plain": {}, **MODES}.items():
            config = LocalModelConfig(
                model=str(tiny_model_dir), dtype="float32", warmup=False, **fields
            )
            adapters[name] = LocalVLMAdapter(config)
            await adapters[name].start()
        yield adapters
    finally:
        for adapter in adapters.values():
            await adapter.aclose()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@pytest.mark.parametrize("name", list(MODES))
async def test_each_mode_serves_an_image_chat_and_reports_it(
    started: dict[str, LocalVLMAdapter], name: str
) -> None:
    adapter = started[name]
    assert adapter.weight_modes.key == KEYS[name]
    assert any(LOGGED[name] in line for line in adapter.weight_modes.describe())
    done = await collect(adapter.stream(request(CONVERSATIONS["image"], max_tokens=12)))
    assert done.finish_reason in ("stop", "length")
    assert done.usage.image_tokens > 0
    assert done.usage.completion_tokens > 0
    assert "vision_encode" in done.timings


async def test_the_start_up_log_says_what_was_applied(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = LocalModelConfig(
        model=str(tiny_model_dir), dtype="float32", warmup=False, quantize="int8"
    )
    adapter = LocalVLMAdapter(config)
    with caplog.at_level(logging.INFO, logger="adapters.local.loading"):
        await adapter.start()
    await adapter.aclose()
    assert f"model weights: {LOGGED['int8']}" in caplog.text
    assert "model weights: prepack on (float32 on the CPU): lm_head only" in caplog.text
    assert "model weights: compile off" in caplog.text


async def test_compile_keeps_the_tokens_and_int8_stays_close(
    started: dict[str, LocalVLMAdapter], reference: Reference
) -> None:
    messages = CONVERSATIONS["image"]
    ids = reference.generate(messages, max_new_tokens=16)
    compiled = await collect(started["compile"].stream(request(messages, max_tokens=16)))
    assert compiled.text == reference.text(ids)  # fused elementwise kernels, same arithmetic
    # int8 vision features differ from float32's, but only by quantization noise.
    pictures = [p for m in CONVERSATIONS["images"] for p in m.content if isinstance(p, ImageInput)]
    plain = await started["plain"].encode_images(pictures, caches=CACHES_OFF)
    for name, changed in (("int8_vision", True), ("int8", False), ("compile", False)):
        features = await started[name].encode_images(pictures, caches=CACHES_OFF)
        for got, expected in zip(features, plain, strict=True):
            error = relative_error(got.embeds, expected.embeds)
            assert (0 < error < 0.1) if changed else error < 1e-5, (name, error)


async def test_cache_keys_name_the_mode(
    started: dict[str, LocalVLMAdapter], tiny_model_dir: Path
) -> None:
    picture = image(64, 64, seed=5)
    keys = {name: adapter._reuse.key(picture, "scope") for name, adapter in started.items()}
    assert len(set(keys.values())) == len(keys)  # same image, same scope: one key per mode
    for name, key in keys.items():
        assert KEYS[name] in key
    # The same mode loaded again gives the same key (stable across restarts).
    again = LocalVLMAdapter(
        LocalModelConfig(model=str(tiny_model_dir), dtype="float32", warmup=False, quantize="int8")
    )
    await again.start()
    try:
        assert again._reuse.key(picture, "scope") == keys["int8"]
    finally:
        await again.aclose()


async def test_int8_where_auto_picks_bfloat16_stops_the_start(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_cpu_has_native_bf16", lambda: True)
    config = LocalModelConfig(model=str(tiny_model_dir), device="cpu", quantize="int8")
    adapter = LocalVLMAdapter(config)
    with pytest.raises(ModelUnavailable, match=r"runs bfloat16 .* set dtype = float32") as info:
        await adapter.start()
    await adapter.aclose()
    assert "Traceback" not in str(info.value)


async def test_a_failed_compile_stops_the_start(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model: Any) -> None:
        raise AssertionError("inductor says no")

    monkeypatch.setattr(compiling, "warm", broken)
    config = LocalModelConfig(model=str(tiny_model_dir), dtype="float32", compile=True)
    adapter = LocalVLMAdapter(config)
    with pytest.raises(ModelUnavailable, match=r"compile = true failed .*set compile = false"):
        await adapter.start()
    await adapter.aclose()
