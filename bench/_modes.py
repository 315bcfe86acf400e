"""The CPU speed modes as the benchmarks run them: loaded through the server's own loading code
(``adapters.local.loading.load_runner`` with a ``LocalModelConfig``) and driven through the
engine's own model calls (``ModelRunner.encode_pixels``, a prefill forward as
``adapters.local.sequence`` runs it, ``adapters.local.batching.decode_step`` over a
``BatchedKV``), so a figure is what the server would do with the same settings.

Used by ``bench/cpu_speed.py`` (speed) and ``bench/accuracy.py`` (numbers against float32).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

__all__ = (
    "ENGINE_MODES",
    "decode_steps",
    "encode",
    "load_engine",
    "prefill",
    "release",
)

ENGINE_MODES: dict[str, dict[str, Any]] = {
    # Full precision: plain float32 nn.Linear everywhere (the accuracy reference).
    "fp32": {"prepack": "off"},
    # The server's default on a CPU without native bf16: float32, oneDNN-prepacked.
    "prepack": {"prepack": "auto"},
    "int8": {"quantize": "int8"},
    "int8_vision": {"quantize": "int8", "quantize_vision": True},
    # lm_head int8 too: `[model] quantize_head`.
    "int8_head": {"quantize": "int8", "quantize_head": True},
    "int8_all": {"quantize": "int8", "quantize_vision": True, "quantize_head": True},
    "compile": {"compile": True},
    "compile_int8": {"compile": True, "quantize": "int8"},
}
"""Mode name -> ``LocalModelConfig`` fields (float32 on the CPU in every mode)."""


def load_engine(model_dir: Path, fields: dict[str, Any], threads: int = 0) -> tuple[Any, Any]:
    """``(runner, processor)``: the model loaded exactly as the server loads it."""
    from transformers import AutoProcessor

    from adapters.local.loading import LocalModelConfig, load_runner

    processor = AutoProcessor.from_pretrained(model_dir)
    config = LocalModelConfig(
        model=str(model_dir), dtype="float32", device="cpu", threads=threads, **fields
    )
    return load_runner(str(model_dir), config, processor.tokenizer), processor


def release(runner: Any) -> None:
    """Drop the runner's model (the caller must hold no other reference)."""
    runner.model = None
    gc.collect()


def encode(runner: Any, processor: Any, images: Sequence[Image.Image]) -> list[Any]:
    """Vision features (``VisionFeatures``) of ``images`` at the processor's size, as the
    engine's encoder job computes them."""
    out = processor.image_processor(images=list(images), return_tensors="pt")
    with torch.inference_mode():
        return list(runner.encode_pixels(out["pixel_values"], out["image_grid_thw"]))


def prefill(runner: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """One forward pass over ``ids`` (``(1, tokens)``, text only) into a fresh cache, keeping
    the last position's logits as the engine's prefill does; ``(cache, float32 logits)``."""
    from transformers import DynamicCache

    kv = DynamicCache()
    with torch.inference_mode():
        out = runner.model(
            input_ids=ids.to(runner.device), cache=kv, use_cache=True, logits_to_keep=1
        )
    return kv, out.logits[0, -1, :].float()


def decode_steps(
    runner: Any, prompts: Sequence[torch.Tensor], steps: int
) -> tuple[list[float], list[int]]:
    """Seconds of each of ``steps`` greedy decode steps of the batch of ``prompts`` (text-only
    ``(1, tokens)`` ids, prefilled one by one first), through the engine's batched step; and the
    first row's greedy tokens (its first token from the prefill, then one per step)."""
    from adapters.local.kvbatch import BatchedKV
    from adapters.local.sequence import decode_step

    caches, tokens = [], []
    for ids in prompts:
        kv, logits = prefill(runner, ids)
        caches.append(kv)
        tokens.append(int(logits.argmax()))
    batch = BatchedKV()
    batch.rebuild([], caches, steps)
    seconds, first = [], [tokens[0]]
    # Text-only prompts: M-RoPE positions equal text positions, so every row's delta is 0.
    deltas = [0] * len(prompts)
    with torch.inference_mode():
        for _ in range(steps):
            start = time.perf_counter()
            logits = decode_step(runner.model, batch, tokens, deltas)
            tokens = [int(t) for t in logits.argmax(-1)]
            seconds.append(time.perf_counter() - start)
            first.append(tokens[0])
    return seconds, first
