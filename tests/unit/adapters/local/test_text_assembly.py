"""TextAssembler (incremental detokenization + stop strings) and the sampling mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from adapters.local.generation import TextAssembler


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def decoder(tokenizer: Any) -> Any:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 1974), max_size=40))
def test_pieces_join_to_the_full_decode(tokenizer: Any, ids: list[int]) -> None:
    assembler = TextAssembler(decoder(tokenizer), ())
    pieces = [assembler.add(i) for i in ids]
    pieces.append(assembler.finish())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_partial_characters_are_held_until_complete(tokenizer: Any) -> None:
    # "你" is three UTF-8 bytes; the tiny vocabulary splits it into byte tokens.
    ids = tokenizer.encode("a你b")
    assert len(ids) >= 3
    assembler = TextAssembler(decoder(tokenizer), ())
    pieces = [assembler.add(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + assembler.finish() == "a你b"


def test_stop_string_cuts_and_stops(tokenizer: Any) -> None:
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog")
    assembler = TextAssembler(decoder(tokenizer), ("fox", "zzz"))
    out = []
    for i in ids:
        out.append(assembler.add(i))
        if assembler.stopped:
            break
    assert assembler.stopped
    assert "".join(out) + assembler.finish() == "The quick brown "


def test_special_tokens_are_not_text(tokenizer: Any) -> None:
    assembler = TextAssembler(decoder(tokenizer), ())
    ids = tokenizer.encode("hi<|vision_start|>there")
    assert "".join(assembler.add(i) for i in ids) + assembler.finish() == "hithere"
