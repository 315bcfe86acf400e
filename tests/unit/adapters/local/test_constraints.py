"""Grammar-constrained ``response_format`` on the tiny random Qwen3-VL: output always valid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from adapters.base import InvalidResponseFormat, ResponseFormat
from adapters.local.constraints import (
    MAX_SCHEMA_BYTES,
    compile_grammar,
    logits_processor_for,
    validate_output,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
}
INVOICE = {
    "type": "object",
    "properties": {
        "invoice": {
            "type": "object",
            "properties": {
                "total": {"type": "number"},
                "currency": {"enum": ["USD", "EUR", "CNY"]},
                "paid": {"type": "boolean"},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                            "qty": {"type": "integer", "minimum": 1},
                            "price": {"type": "number", "exclusiveMinimum": 0},
                        },
                        "required": ["sku", "qty", "price"],
                    },
                },
            },
            "required": ["total", "currency", "paid", "items"],
        },
        "note": {"type": ["string", "null"]},
    },
    "required": ["invoice", "note"],
}
BOXES = {  # grounding-style output: a list of labelled boxes, with $defs and $ref
    "$defs": {
        "box": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 1000},
            "minItems": 4,
            "maxItems": 4,
        }
    },
    "type": "object",
    "properties": {
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "bbox": {"$ref": "#/$defs/box"}},
                "required": ["label", "bbox"],
            },
        }
    },
    "required": ["objects"],
}
FREE_TEXT = {  # unbounded strings: a random model never closes them without closing mode
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confident": {"type": "boolean"}},
    "required": ["answer", "confident"],
}
FORMATS = {
    "json_object": ResponseFormat("json_object"),
    "person": ResponseFormat("json_schema", PERSON),
    "invoice": ResponseFormat("json_schema", INVOICE, strict=True),
    "boxes": ResponseFormat("json_schema", BOXES),
    "free_text": ResponseFormat("json_schema", FREE_TEXT),
}


class Tiny:
    def __init__(self, directory: Path) -> None:
        self.processor = AutoProcessor.from_pretrained(directory)
        self.tokenizer = self.processor.tokenizer
        self.model = AutoModelForImageTextToText.from_pretrained(directory).eval()
        self.vocab_size = int(self.model.config.get_text_config().vocab_size)
        self.stops = {
            self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
        }

    def inputs(self, *prompts: str) -> Any:
        self.tokenizer.padding_side = "left"
        conversations = [
            [{"role": "user", "content": [{"type": "text", "text": p}]}] for p in prompts
        ]
        return self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
        )

    def generate(
        self, fmt: ResponseFormat, *, max_tokens: int, seed: int | None, prompts: tuple[str, ...]
    ) -> list[tuple[str, bool]]:
        """(text, ended on a stop token) per prompt."""
        inputs = self.inputs(*prompts)
        processor = logits_processor_for(
            fmt, self.tokenizer, self.vocab_size, max_tokens=max_tokens
        )
        sampling: dict[str, Any] = {"do_sample": False}
        if seed is not None:
            torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=max_tokens, logits_processor=[processor], **sampling
            )
        results = []
        for row in out[:, inputs["input_ids"].shape[1] :].tolist():
            stopped = any(t in self.stops for t in row)
            row = row[: next((i for i, t in enumerate(row) if t in self.stops), len(row))]
            results.append((self.tokenizer.decode(row), stopped))
        assert processor.steps > 0
        return results


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[Tiny]:
    # One intra-op thread: the model is tiny, and spinning threads stall badly when other
    # processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Tiny(tiny_model_dir)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_output_parses_and_validates(tiny: Tiny, name: str, seed: int | None) -> None:
    fmt = FORMATS[name]
    [(text, stopped)] = tiny.generate(fmt, max_tokens=128, seed=seed, prompts=("Answer in JSON",))
    assert stopped, f"no stop token within the budget: {text!r}"
    value = validate_output(text, fmt)
    if fmt.schema and "properties" in fmt.schema:  # properties come in schema order
        assert list(value) == list(fmt.schema["properties"])[: len(value)]


@pytest.mark.parametrize("max_tokens", [24, 40, 64])
def test_closing_mode_finishes_inside_a_small_budget(tiny: Tiny, max_tokens: int) -> None:
    for fmt in (FORMATS["free_text"], FORMATS["json_object"]):
        for seed in (None, 3):
            [(text, stopped)] = tiny.generate(fmt, max_tokens=max_tokens, seed=seed, prompts=("x",))
            assert stopped
            validate_output(text, fmt)


def test_without_a_budget_strings_may_ramble(tiny: Tiny) -> None:
    """Why closing mode exists: the grammar alone lets a random model write one string forever."""
    inputs = tiny.inputs("Answer in JSON")
    processor = logits_processor_for(FORMATS["free_text"], tiny.tokenizer, tiny.vocab_size)
    with torch.inference_mode():
        out = tiny.model.generate(
            **inputs, max_new_tokens=64, do_sample=False, logits_processor=[processor]
        )
    row = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert not tiny.stops & set(row)
    assert tiny.tokenizer.decode(row).startswith('{"answer": "')


def test_batched_rows_each_follow_the_grammar(tiny: Tiny) -> None:
    prompts = ("Describe the invoice as JSON", "A much longer prompt, padded differently: go")
    for text, stopped in tiny.generate(FORMATS["invoice"], max_tokens=200, seed=5, prompts=prompts):
        assert stopped
        validate_output(text, FORMATS["invoice"])


def test_control_characters_and_added_tokens_are_never_allowed(tiny: Tiny) -> None:
    # xgrammar 0.2.8 lets raw control bytes into strings with maxLength (JSON forbids them) and
    # takes added tokens such as <|im_start|> for literal text.
    control = [i for i in range(256) if any(c < 0x20 for c in tiny.tokenizer.decode([i]).encode())]
    added = [i for i in tiny.tokenizer.added_tokens_decoder if i not in tiny.stops]
    assert control
    assert tiny.tokenizer.convert_tokens_to_ids("<|image_pad|>") in added
    processor = logits_processor_for(FORMATS["person"], tiny.tokenizer, tiny.vocab_size)
    prefix = tiny.tokenizer('{"name": "', add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[0, *prefix]])
    scores = torch.zeros(1, tiny.vocab_size)
    for k in range(1, ids.shape[1] + 1):
        scores = processor(ids[:, :k], torch.zeros(1, tiny.vocab_size))  # type: ignore[arg-type]
    assert torch.isinf(scores[0, control]).all()
    assert torch.isinf(scores[0, added]).all()
    assert (scores[0] > -torch.inf).sum() > 100  # free text is still allowed inside the string


def test_grammars_are_cached_per_schema_and_tokenizer(tiny: Tiny, tiny_model_dir: Path) -> None:
    first = compile_grammar(FORMATS["person"], tiny.tokenizer, tiny.vocab_size)
    copy = ResponseFormat("json_schema", json.loads(json.dumps(PERSON)))
    assert compile_grammar(copy, tiny.tokenizer, tiny.vocab_size) is first
    assert compile_grammar(FORMATS["boxes"], tiny.tokenizer, tiny.vocab_size) is not first
    other = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    assert compile_grammar(FORMATS["person"], other, tiny.vocab_size) is not first


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "nonsense"}, "not a valid JSON schema"),
        ({"type": "string", "pattern": "(unclosed"}, "not a valid JSON schema"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "not a valid JSON schema"),
        ({"$ref": "http://127.0.0.1:9/schema.json"}, "must be local"),
        ({"type": "number", "maximum": float("nan")}, "not a valid JSON schema"),
        (_nested(40), "nested deeper"),
        # Counted repetitions compile in quadratic time: b{20000} took 31 s, so bound them.
        ({"type": "string", "pattern": "b{20000}"}, "repeats too much"),
        ({"type": "string", "pattern": "c{5000}"}, "repeats too much"),
        ({"type": "string", "pattern": "(a{100}){100}"}, "repeats too much"),
        ({"type": "string", "pattern": "[a-z]{2,}" * 100}, "longer than"),
        ({"enum": ["x" * 100] * (MAX_SCHEMA_BYTES // 100)}, "larger than"),
        (None, "must be an object"),
    ],
)
def test_invalid_schemas_raise_a_safe_error(tiny: Tiny, schema: Any, message: str) -> None:
    with pytest.raises(InvalidResponseFormat, match=message) as info:
        compile_grammar(ResponseFormat("json_schema", schema), tiny.tokenizer, tiny.vocab_size)
    text = str(info.value)
    assert "/" not in text.replace("'#/...'", "")  # no C++ source paths or URLs echoed
    assert "Error" not in text


def test_ordinary_patterns_compile_quickly(tiny: Tiny) -> None:
    for pattern in (r"^\d{3}-\d{4}$", r"[A-Z]{2}\d{6}", "b{1024}", r"a\{9999\}"):
        schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": pattern}}}
        compile_grammar(ResponseFormat("json_schema", schema), tiny.tokenizer, tiny.vocab_size)


def test_validate_output() -> None:
    assert validate_output('{"a": 1}', FORMATS["json_object"]) == {"a": 1}
    with pytest.raises(ValueError, match="not a JSON object"):
        validate_output("[1]", FORMATS["json_object"])
    with pytest.raises(ValueError, match="required"):
        validate_output('{"name": "x", "age": 3}', FORMATS["person"])
    with pytest.raises(ValueError, match="delimiter"):
        validate_output('{"name": "x"', FORMATS["person"])
