"""Dynamic int8 quantization of float32 ``nn.Linear`` layers on the CPU (``[model] quantize``,
``quantize_vision``).

Why: decoding on the CPU is bound by reading weights (every step reads every Linear weight of the
language model once), and int8 weights are a quarter of float32's bytes. Dynamic quantization
(``torch.ao.quantization.quantize_dynamic``) stores each weight as int8 with one scale per output
row, quantizes each call's activations on the fly and multiplies in int8 with fbgemm's kernels
(the ``x86`` engine). One 6144x2048 Linear, AMD EPYC with avx2 + fma (no avx512, no VNNI), 2
threads, weights read from memory (8 copies in turn), best of 6: float32 2.73 / 9.06 / 8.34 ms at
1 / 4 / 8 rows, prepacked float32 2.25 / 2.75 / 3.40 ms, int8 dynamic 0.55 / 0.53 / 0.74 ms,
torchao's ``Int8DynamicActivationInt8WeightConfig`` 5.0 / 18.8 / 37.4 ms (no fast int8 CPU
kernel there). On an AMX Xeon int8 doubled the 2b model's decode speed (``bench/cpu_speed.py``).

Trade-offs: the numbers change (``bench/accuracy.py`` measures how much against float32).
``lm_head`` stays float32 (and prepacked) unless ``quantize_head``: its logits decide every token
directly, and where it is tied to the input embedding, whose lookup needs the float32 matrix, an
int8 copy is extra memory; it is also the largest matrix (Qwen3-VL-2B, same machine: prepacked
float32 45 / 73 ms at 1 / 8 rows, int8 11 / 20 ms), so measure before offering it. Quantized
layers carry fbgemm's own packed weights, so ``adapters.local.packing`` leaves them alone and
packs only what stays float32. ``torch.compile`` leaves them alone too (``compiling``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapters.local.packing import language_model

__all__ = (
    "QUANTIZE_CHOICES",
    "QuantizeReport",
    "apply_quantization",
    "quantize_refusal",
)

QUANTIZE_CHOICES = ("none", "int8")
_ENGINE = "x86"
"""fbgemm's kernels for x86 (``fbgemm`` is the older name of the same backend)."""


@dataclass(frozen=True)
class QuantizeReport:
    """What ``apply_quantization`` did, for the start-up log and the cache keys."""

    language_layers: int = 0
    vision_layers: int = 0
    head: bool = False
    """lm_head is int8 too."""
    int8_bytes: int = 0

    @property
    def applied(self) -> bool:
        return bool(self.language_layers or self.vision_layers or self.head)

    def describe(self) -> str:
        if not self.applied:
            return "int8 quantization off"
        parts = []
        if self.language_layers:
            head = "lm_head int8 too" if self.head else "lm_head kept float32"
            parts.append(f"{self.language_layers} Linear layers of the language model ({head})")
        if self.vision_layers:
            parts.append(f"{self.vision_layers} Linear layers of the vision encoder")
        return (
            f"int8 dynamic quantization (per-channel weights, {_ENGINE} engine): "
            f"{' and '.join(parts)}, {self.int8_bytes / 2**20:.1f} MiB of int8 weights"
        )


def quantize_refusal(
    quantize: str, vision: bool, head: bool, device: torch.device, dtype: torch.dtype
) -> str | None:
    """Why the quantization settings cannot apply to a model of ``dtype`` on ``device``; None if
    they can (cheap: check before loading the weights)."""
    if quantize not in QUANTIZE_CHOICES:
        return f"quantize must be none or int8, not {quantize!r}"
    if head and quantize != "int8":
        return "quantize_head needs quantize = int8"
    if quantize == "none" and not vision:
        return None
    what = "quantize = int8" if quantize == "int8" else "quantize_vision = true"
    if device.type != "cpu":
        return (
            f"{what} runs on the CPU only (dynamic int8 has no {device.type} kernels), "
            f"but the model runs on {device.type}; set device = cpu or turn it off"
        )
    if dtype != torch.float32:
        name = str(dtype).removeprefix("torch.")
        return (
            f"{what} quantizes float32 Linear layers, but the model runs {name} (dtype = auto "
            "picks bfloat16 on CPUs with native bf16); set dtype = float32 or turn it off"
        )
    if _ENGINE not in torch.backends.quantized.supported_engines:
        return f"{what} needs torch's {_ENGINE} quantized engine (fbgemm), which this torch lacks"
    return None


def apply_quantization(
    model: Any,
    quantize: str,
    vision: bool,
    device: torch.device,
    dtype: torch.dtype,
    *,
    head: bool = False,
) -> QuantizeReport:
    """Replace the float32 ``nn.Linear`` layers of the language model (``quantize = int8``; and
    lm_head with ``head``) and of the vision encoder (``vision``) by dynamic int8 ones, in
    place. Raises ``ValueError`` where ``quantize_refusal`` refuses."""
    refusal = quantize_refusal(quantize, vision, head, device, dtype)
    if refusal is not None:
        raise ValueError(refusal)
    if quantize == "none" and not vision:
        return QuantizeReport()
    # Process-wide: the engine decides both the packed weight format and the kernels used at
    # run time, so it is set before packing and never changed after (one model per process).
    torch.backends.quantized.engine = _ENGINE
    language = vision_layers = 0
    int8 = 0
    if quantize == "int8":
        language, size = _quantize_children(language_model(model))
        int8 += size
    quantized_head = False
    if head and type(getattr(model, "lm_head", None)) is nn.Linear:
        # quantize_dynamic swaps children only, so lm_head is swapped from a holder.
        holder = nn.Sequential(model.lm_head)
        _, size = _quantize_children(holder)
        model.lm_head = holder[0]
        quantized_head = True
        int8 += size
    if vision:
        vision_layers, size = _quantize_children(model.model.visual)
        int8 += size
    return QuantizeReport(language, vision_layers, quantized_head, int8)


def _quantize_children(module: nn.Module) -> tuple[int, int]:
    """Dynamic int8 for every plain ``nn.Linear`` below ``module``; (layers, int8 bytes)."""
    linears = [m for m in module.modules() if type(m) is nn.Linear]
    if not linears:
        return 0, 0
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # Per-channel scales: one per output row, so a row of small weights is not quantized with
    # the range of the largest row (same speed as per-tensor in the micro-measurement).
    with warnings.catch_warnings():
        # torch.ao.quantization announces its removal in favour of torchao, whose int8 dynamic
        # Linear has no fast x86 CPU kernel (9-50x slower, module docstring); these are the
        # fastest int8 kernels on CPUs without AMX, so the announcement is not repeated per load.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*")
        quantize_dynamic(
            module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    return len(linears), sum(m.weight.numel() for m in linears)
