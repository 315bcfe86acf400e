"""The CPU speed modes applied to loaded weights, in order: int8 quantization
(``adapters.local.quantize``), then oneDNN prepacking of what stays float32
(``adapters.local.packing``), then ``torch.compile`` of the elementwise work
(``adapters.local.compiling``, last: it wraps modules whatever their Linear layers became).

``WeightModes`` records what was applied: the start-up log prints it, the adapter reports it
(``LocalVLMAdapter.weight_modes``) and its ``key`` is part of every cache key, because int8
weights (and, by a rounding, packed or compiled kernels) give other numbers than plain float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.local.compiling import CompileReport, apply_compile
from adapters.local.packing import PackReport, apply_prepack, prepack_refusal
from adapters.local.quantize import QuantizeReport, apply_quantization, quantize_refusal

__all__ = ("ModeChoices", "WeightModes", "apply_modes", "modes_refusal")


@dataclass(frozen=True)
class ModeChoices:
    """The settings that choose the modes (``LocalModelConfig``'s fields of the same names)."""

    prepack: str = "auto"
    quantize: str = "none"
    quantize_vision: bool = False
    quantize_head: bool = False
    compile: bool = False


@dataclass(frozen=True)
class WeightModes:
    """What loading applied; the default is plain weights (nothing applied)."""

    quantize: QuantizeReport = field(default_factory=QuantizeReport)
    prepack: PackReport = field(default_factory=lambda: PackReport(False, "not loaded"))
    compile: CompileReport = field(default_factory=CompileReport)

    def describe(self) -> tuple[str, ...]:
        """One line per mode, for the start-up log."""
        return (self.quantize.describe(), self.prepack.describe(), self.compile.describe())

    @property
    def key(self) -> str:
        """A short, stable name of the numbers these weights produce, for cache keys."""
        q = self.quantize
        parts = (("lm", q.language_layers), ("vision", q.vision_layers), ("head", q.head))
        int8 = [name for name, on in parts if on]
        return ";".join(
            (
                f"int8={'+'.join(int8) or 'none'}",
                f"prepack={'on' if self.prepack.layers else 'off'}",
                f"compile={'on' if self.compile.applied else 'off'}",
            )
        )


def modes_refusal(choices: ModeChoices, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the modes cannot apply to a model of ``dtype`` on ``device``; None if they can."""
    return prepack_refusal(choices.prepack, device, dtype) or quantize_refusal(
        choices.quantize, choices.quantize_vision, choices.quantize_head, device, dtype
    )


def apply_modes(
    model: Any, choices: ModeChoices, device: torch.device, dtype: torch.dtype
) -> WeightModes:
    """Apply every chosen mode to the loaded ``model`` (on its device, in its dtype, in eval
    mode). Raises ``ValueError`` for a refused choice, ``CompileFailed`` when compiling fails."""
    quantized = apply_quantization(
        model,
        choices.quantize,
        choices.quantize_vision,
        device,
        dtype,
        head=choices.quantize_head,
    )
    packed = apply_prepack(model, choices.prepack, device, dtype)
    compiled = apply_compile(model, choices.compile)
    return WeightModes(quantized, packed, compiled)
