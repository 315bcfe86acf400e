"""oneDNN-prepacked Linear layers: equal to nn.Linear, applied only where they may be, the dense
weights freed (the tied embedding kept), and the same greedy tokens as the unpacked model."""

from __future__ import annotations

import gc
import logging
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoProcessor

from adapters.base import ModelUnavailable
from adapters.local import LocalModelConfig
from adapters.local.loading import load_runner
from adapters.local.packing import PackedLinear, apply_prepack, prepack_supported

pytestmark = pytest.mark.skipif(not prepack_supported(), reason="this torch has no oneDNN")

CPU = torch.device("cpu")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1,), (4,), (8,), (64,), (2, 5), (3, 1), (2, 3, 4)])
def test_packed_linear_equals_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias)
    if bias:
        nn.init.normal_(linear.bias)  # nn.Linear's bias may be small enough to hide a dropped one
    packed = PackedLinear(linear)
    x = torch.randn(*shape, 96)
    with torch.inference_mode():
        expected, got = linear(x), packed(x)
    assert got.dtype is torch.float32
    assert got.layout is torch.strided
    assert got.shape == (*shape, 160)
    torch.testing.assert_close(got, expected)


def test_packed_linear_takes_a_non_contiguous_slice() -> None:
    # lm_head sees hidden_states[:, -1:, :] (logits_to_keep=1): a view with gaps.
    linear = nn.Linear(32, 48)
    x = torch.randn(3, 7, 32)[:, -1:, :]
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x))


def test_only_float32_cpu_weights_are_packed() -> None:
    with pytest.raises(ValueError, match="float32"):
        PackedLinear(nn.Linear(8, 8).to(torch.bfloat16))


def load(directory: Path, prepack: str) -> Any:
    tokenizer = AutoProcessor.from_pretrained(directory).tokenizer
    config = LocalModelConfig(model=str(directory), dtype="float32", device="cpu", prepack=prepack)
    return load_runner(str(directory), config, tokenizer).model


def linears(module: nn.Module) -> list[type]:
    return [type(m) for m in module.modules() if isinstance(m, nn.Linear | PackedLinear)]


def test_prepack_replaces_the_language_model_and_lm_head_only(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="adapters.local.loading"):
        model = load(tiny_model_dir, "auto")  # float32 on the CPU: auto packs
    # The start-up log says what was applied.
    assert "model weights: prepack on (float32 on the CPU): 15 Linear layers" in caplog.text
    assert set(linears(model.model.language_model)) == {PackedLinear}
    assert isinstance(model.lm_head, PackedLinear)
    assert set(linears(model.model.visual)) == {nn.Linear}  # thousands of rows: left as is
    # The tied embedding keeps its dense weight for the lookup.
    embedding = model.get_input_embeddings().weight
    assert embedding.layout is torch.strided
    assert embedding.dtype is torch.float32
    unpacked = load(tiny_model_dir, "off")
    head = unpacked.lm_head
    assert type(head) is nn.Linear
    assert head.weight is unpacked.get_input_embeddings().weight  # tied
    report = apply_prepack(unpacked, "on", CPU, torch.float32)
    assert report.extra_bytes == head.weight.numel() * 4  # the packed copy of the tied lm_head


def test_dense_weights_are_freed() -> None:
    block = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    model = nn.Module()
    model.model = nn.Module()
    model.model.language_model = block
    refs = [weakref.ref(m.weight) for m in block.modules() if isinstance(m, nn.Linear)]
    report = apply_prepack(model, "auto", CPU, torch.float32)
    gc.collect()
    assert report.applied
    assert report.layers == 2
    assert all(r() is None for r in refs)


@pytest.mark.parametrize(
    ("choice", "device", "dtype"),
    [
        ("off", CPU, torch.float32),
        ("auto", CPU, torch.bfloat16),
        ("auto", torch.device("cuda"), torch.float32),
    ],
)
def test_prepack_stays_off(choice: str, device: torch.device, dtype: torch.dtype) -> None:
    model = nn.Module()
    model.model = nn.Module()
    model.model.language_model = nn.Linear(4, 4)
    report = apply_prepack(model, choice, device, dtype)
    assert not report.applied
    assert "prepack off" in report.describe()
    assert type(model.model.language_model) is nn.Linear


def test_prepack_on_where_it_cannot_apply_is_an_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        apply_prepack(nn.Module(), "on", CPU, torch.bfloat16)
    with pytest.raises(ValueError, match="prepack"):
        LocalModelConfig(prepack="yes")
    # Refused before the weights are read, with a message that says what to change.
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    config = LocalModelConfig(model="x", dtype="bfloat16", device="cpu", prepack="on")
    with pytest.raises(ModelUnavailable, match="set auto or off"):
        load_runner(str(tiny_model_dir / "absent"), config, tokenizer)


def test_greedy_tokens_match_the_unpacked_model(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.tokenizer.padding_side = "left"
    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    one = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    texts = [[{"role": "user", "content": [{"type": "text", "text": t}]}] for t in PROMPTS]
    chats = [
        processor.apply_chat_template(one, add_generation_prompt=True, tokenize=False),
        *(
            processor.apply_chat_template(t, add_generation_prompt=True, tokenize=False)
            for t in texts
        ),
    ]
    with_image = processor(text=chats[:1], images=[image], return_tensors="pt")
    batch = processor(text=chats[1:], return_tensors="pt", padding=True)  # M = 3 rows per step
    outputs = []
    for prepack in ("off", "on"):
        model = load(tiny_model_dir, prepack)
        with torch.inference_mode():
            outputs.append(
                [
                    model.generate(**inputs, do_sample=False, max_new_tokens=24).tolist()
                    for inputs in (with_image, batch)
                ]
            )
    assert outputs[0] == outputs[1]


PROMPTS = ("Tell me a story.", "Hi", "List three colours of the sea at dawn, please.")
