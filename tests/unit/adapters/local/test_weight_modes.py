"""The CPU speed modes without a checkpoint: which choices are refused and why, what int8
quantization replaces, how prepacking composes with it, and the cache-key names of the modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from adapters.local import LocalModelConfig
from adapters.local.compiling import CompileReport
from adapters.local.modes import ModeChoices, WeightModes, apply_modes, modes_refusal
from adapters.local.packing import PackedLinear, PackReport, prepack_supported
from adapters.local.quantize import QuantizeReport, apply_quantization, quantize_refusal

CPU = torch.device("cpu")
F32 = torch.float32
needs_fbgemm = pytest.mark.skipif(
    "x86" not in torch.backends.quantized.supported_engines, reason="no x86 quantized engine"
)


def fake_model() -> nn.Module:
    """The shape of a Qwen3-VL model as the modes see it: model.language_model, model.visual,
    lm_head tied to the input embedding."""
    model = nn.Module()
    model.model = nn.Module()
    model.model.language_model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    model.model.visual = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    embedding = nn.Embedding(40, 16)
    model.lm_head = nn.Linear(16, 40, bias=False)
    model.lm_head.weight = embedding.weight
    model.get_input_embeddings = lambda: embedding
    return model


def kinds(module: nn.Module) -> list[type]:
    return [type(m) for m in module.children() if not isinstance(m, nn.ReLU | nn.GELU)]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"quantize": "int4"}, "quantize must be none or int8"),
        ({"quantize_head": True}, "quantize_head needs quantize = int8"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "set dtype = float32"),
        ({"quantize_vision": True, "dtype": "bfloat16"}, "quantize_vision = true quantizes"),
        ({"quantize": "int8", "device": "cuda"}, "CPU only .* runs on cuda"),
        ({"quantize_vision": True, "device": "mps"}, "CPU only .* runs on mps"),
    ],
)
def test_config_refuses_what_int8_cannot_do(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LocalModelConfig(model="x", **fields)  # type: ignore[arg-type]


def test_config_accepts_every_mode_where_it_may_apply() -> None:
    config = LocalModelConfig(
        model="x", quantize="int8", quantize_vision=True, quantize_head=True, compile=True
    )
    assert config.modes == ModeChoices("auto", "int8", True, True, True)
    # dtype auto may still become bfloat16 at load, which refuses it then (test_fast_modes.py).
    assert LocalModelConfig(model="x", quantize="int8", dtype="auto", device="auto")


def test_refusals_name_the_resolved_dtype_and_device() -> None:
    refusal = quantize_refusal("int8", False, False, CPU, torch.bfloat16)
    assert refusal is not None
    assert "runs bfloat16" in refusal
    assert "dtype = auto picks bfloat16" in refusal
    assert quantize_refusal("none", False, False, torch.device("cuda"), torch.bfloat16) is None
    assert quantize_refusal("int8", True, True, CPU, F32) is None
    both = modes_refusal(ModeChoices(prepack="on", quantize="int8"), CPU, torch.bfloat16)
    assert both is not None
    assert both.startswith("prepack = on")  # the first refusal is reported


@needs_fbgemm
def test_int8_replaces_the_chosen_linear_layers_only() -> None:
    model = fake_model()
    report = apply_quantization(model, "int8", False, CPU, F32)
    assert kinds(model.model.language_model) == [DynamicInt8Linear, DynamicInt8Linear]
    assert kinds(model.model.visual) == [nn.Linear, nn.Linear]
    assert type(model.lm_head) is nn.Linear
    assert report == QuantizeReport(language_layers=2, int8_bytes=16 * 32 * 2)
    assert "2 Linear layers of the language model (lm_head kept float32)" in report.describe()

    model = fake_model()
    report = apply_quantization(model, "none", True, CPU, F32)
    assert kinds(model.model.language_model) == [nn.Linear, nn.Linear]
    assert kinds(model.model.visual) == [DynamicInt8Linear, DynamicInt8Linear]
    assert "2 Linear layers of the vision encoder" in report.describe()


@needs_fbgemm
def test_int8_layers_stay_close_to_float32() -> None:
    torch.manual_seed(0)
    model = fake_model()
    x = torch.randn(5, 16)
    with torch.inference_mode():
        expected = model.model.language_model(x)
        apply_quantization(model, "int8", False, CPU, F32)
        got = model.model.language_model(x)
    assert ((got - expected).norm() / expected.norm()).item() < 0.05


@needs_fbgemm
def test_nothing_is_quantized_by_default_or_where_refused() -> None:
    model = fake_model()
    assert not apply_quantization(model, "none", False, CPU, F32).applied
    assert "int8 quantization off" in QuantizeReport().describe()
    with pytest.raises(ValueError, match="CPU only"):
        apply_quantization(model, "int8", False, torch.device("cuda"), F32)
    assert kinds(model.model.language_model) == [nn.Linear, nn.Linear]


@needs_fbgemm
@pytest.mark.skipif(not prepack_supported(), reason="this torch has no oneDNN")
def test_prepack_packs_only_what_stays_float32() -> None:
    model = fake_model()
    modes = apply_modes(model, ModeChoices(quantize="int8"), CPU, F32)
    assert kinds(model.model.language_model) == [DynamicInt8Linear, DynamicInt8Linear]
    assert isinstance(model.lm_head, PackedLinear)
    assert "lm_head only (the language model's Linear layers are int8)" in modes.prepack.describe()
    assert modes.key == "int8=lm;prepack=on;compile=off"

    model = fake_model()
    choices = ModeChoices(quantize="int8", quantize_vision=True, quantize_head=True)
    modes = apply_modes(model, choices, CPU, F32)
    assert isinstance(model.lm_head, DynamicInt8Linear)
    assert "nothing left in float32 to pack" in modes.prepack.describe()
    assert modes.key == "int8=lm+vision+head;prepack=off;compile=off"
    assert "(lm_head int8 too)" in modes.quantize.describe()


def test_every_mode_has_its_own_key() -> None:
    keys = {
        WeightModes().key,
        WeightModes(prepack=PackReport(True, "auto", layers=3)).key,
        WeightModes(quantize=QuantizeReport(language_layers=2)).key,
        WeightModes(quantize=QuantizeReport(vision_layers=2)).key,
        WeightModes(quantize=QuantizeReport(language_layers=2, head=True)).key,
        WeightModes(compile=CompileReport(norms=2, mlps=1)).key,
    }
    assert len(keys) == 6
    assert WeightModes().key == "int8=none;prepack=off;compile=off"
