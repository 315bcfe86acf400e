"""oneDNN-prepacked float32 ``nn.Linear`` layers for decoding on the CPU.

Why: PyTorch's float32 ``nn.Linear`` on the CPU takes a GEMM path for a few rows that costs about
3 times its one-row path (AVX2 EPYC, 2 threads, 6144x2048: 2.3 ms at M=1, 7.1 ms at M=4, 7.4 ms
at M=8), so a decode step for 4 sequences cost about 3.9 times one sequence's and continuous
batching did not pay. oneDNN's inner product on a weight reordered once into its blocked layout:
1.5 / 2.2 / 2.6 ms (``bench/linear_bench.py`` measures both and the alternatives, side by side).

The kernel is the one inductor's CPU weight freezing uses: ``mkldnn._reorder_linear_weight``
once, then ``mkldnn._linear_pointwise`` per call, which takes dense inputs of any leading
dimensions (no layout conversion per call, unlike ``torch.utils.mkldnn.MkldnnLinear``, 1.4-1.5x
slower at 4-8 rows) and returns a dense tensor. MKL's packed sgemm (``mkl._mkl_linear``) lost:
0.8-1.0x the default's time at 4-8 rows, packed for one row count, and it needs the dense weight
beside the packed one.

Only float32: oneDNN's bf16 reorder needs avx512bw/vl/dq or avx_ne_convert, and CPUs with native
bf16 already have fast bf16 GEMMs (measure before packing bf16 there). A packed model cannot be
deep-copied, and inductor (``torch.compile``'s default backend) refuses the packed weight as a
graph input: it packs weights itself when freezing, so compile the unpacked model instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = (
    "PREPACK_CHOICES",
    "PackReport",
    "PackedLinear",
    "apply_prepack",
    "language_model",
    "prepack_refusal",
    "prepack_supported",
)

PREPACK_CHOICES = ("auto", "on", "off")


class PackedLinear(nn.Module):
    """``nn.Linear`` (float32, CPU) whose weight lives only in oneDNN's blocked layout.

    The packed weight is a plain attribute, not a parameter or buffer: an ``mkldnn``-layout
    tensor supports almost no tensor operations (``state_dict`` saving, ``.to(dtype)``,
    ``copy_``), so module-wide walks (``model.to``, ``model.dtype``, ``state_dict``) must not
    see it. Pack after the model is on its device and in its dtype, as the last loading step.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError("PackedLinear packs float32 CPU weights only")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # batch_size=None: oneDNN picks the blocking for an unknown row count. Hints of 4, 8 or 64
        # measured the same; a hint of 1 was 20-30% faster at M=1 but 30-70% slower at M=4.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        # A buffer without grad: the op records autograd for a bias that requires grad, which
        # inference never needs. Not persistent: state_dict must not carry half a layer.
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, packed=onednn"
        )


@dataclass(frozen=True)
class PackReport:
    """What ``apply_prepack`` did, for the start-up log line."""

    applied: bool
    reason: str
    layers: int = 0
    packed_bytes: int = 0
    extra_bytes: int = 0
    """Bytes packing added: packed copies of weights that stay dense elsewhere (tied)."""
    head: bool = True
    """lm_head is among ``layers`` (it is not where it was quantized to int8 before)."""

    def describe(self) -> str:
        if not self.applied:
            return f"prepack off ({self.reason})"
        if self.layers == 0:
            return f"prepack on ({self.reason}): nothing left in float32 to pack (int8 layers)"
        what = f"{self.layers} Linear layers of the language model and lm_head"
        if self.layers == int(self.head):
            what = "lm_head only (the language model's Linear layers are int8)"
        elif not self.head:
            what = f"{self.layers} Linear layers of the language model (lm_head not packed)"
        return (
            f"prepack on ({self.reason}): {what}, {_size(self.packed_bytes)} of float32 weights "
            f"in oneDNN's blocked layout, {_size(self.extra_bytes)} more for tied weights (a "
            "packed copy of each)"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def prepack_supported() -> bool:
    """oneDNN is built in and enabled, and this torch has the two ops."""
    mkldnn = torch.backends.mkldnn
    if not (mkldnn.is_available() and mkldnn.enabled):
        return False
    ops = torch.ops.mkldnn
    return hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")


def apply_prepack(model: Any, choice: str, device: torch.device, dtype: torch.dtype) -> PackReport:
    """Replace the language model's ``nn.Linear`` layers and ``lm_head`` by ``PackedLinear``
    where ``choice`` says (``auto``: float32 on the CPU with oneDNN; ``on``: the same
    conditions, but their absence is an error; ``off``: never).

    Only plain float32 ``nn.Linear`` layers are packed: int8 ones (``adapters.local.quantize``,
    applied before) keep fbgemm's own packed weights.

    The vision encoder keeps ``nn.Linear``: its layers see thousands of rows per image, where the
    default GEMM path is already efficient (1024->4096 at 3072 rows, one thread: 329 ms default,
    367 ms packed); packing is about the few rows of a decode step.
    """
    refusal = prepack_refusal(choice, device, dtype)
    if refusal is not None:
        raise ValueError(refusal)
    if choice == "off":
        return PackReport(False, "prepack = off")
    missing = _missing_condition(device, dtype)
    if missing is not None:
        return PackReport(False, f"auto: {missing}")
    layers, packed = _pack_children(language_model(model))
    extra = 0
    # lm_head is packed too. Qwen3-VL-2B ties it to the input embedding, whose lookup needs the
    # dense matrix, so the packed copy is extra memory (151936 x 2048 float32 = 1.16 GiB, about
    # 14% of the float32 weights). It pays: the decode step runs lm_head on one row per sequence
    # (logits_to_keep=1) and it is the largest matrix; on the default path 4 rows cost 4.6x one
    # row (one thread: 69 ms at M=1, 316 ms at M=4), packed 102 ms at M=4.
    head = getattr(model, "lm_head", None)
    packed_head = isinstance(head, nn.Linear)  # an int8 lm_head (quantize_head) is not
    if isinstance(head, nn.Linear):
        tied = {id(p) for p in model.get_input_embeddings().parameters()}
        model.lm_head = PackedLinear(head)
        layers += 1
        packed += head.weight.numel() * 4
        if id(head.weight) in tied:
            extra += head.weight.numel() * 4
    reason = "float32 on the CPU" if choice == "auto" else "prepack = on"
    return PackReport(True, reason, layers, packed, extra, head=packed_head)


def prepack_refusal(choice: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``choice`` cannot be honoured for a model of ``dtype`` on ``device``; None if it can
    (cheap: check it before loading the weights)."""
    if choice not in PREPACK_CHOICES:
        return f"prepack must be auto, on or off, not {choice!r}"
    missing = _missing_condition(device, dtype) if choice == "on" else None
    if missing is None:
        return None
    return f"prepack = on needs float32 on the CPU with oneDNN, but {missing}; set auto or off"


def _missing_condition(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cpu":
        return f"the model runs on {device.type}, not the CPU"
    if dtype != torch.float32:
        return f"the model runs {str(dtype).removeprefix('torch.')}, not float32"
    if not prepack_supported():
        return "this torch has no usable oneDNN"
    return None


def language_model(model: Any) -> nn.Module:
    """The decoder stack of a Qwen3-VL model (without lm_head and the vision encoder)."""
    inner = getattr(model, "model", None)
    found = getattr(inner, "language_model", None)
    if isinstance(found, nn.Module):
        return found
    decoder = model.get_decoder()
    if not isinstance(decoder, nn.Module):
        raise TypeError("cannot find the language model to pack")
    return decoder


def _pack_children(module: nn.Module) -> tuple[int, int]:
    """Replace every ``nn.Linear`` below ``module`` in place; (layers, packed bytes)."""
    layers = packed = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:  # not subclasses: they may change forward
            setattr(module, name, PackedLinear(child))
            # The replaced Linear is dropped here, so its dense weight is freed with it (the
            # module tree held the only reference once loading finished).
            layers += 1
            packed += child.weight.numel() * 4
        else:
            sub_layers, sub_packed = _pack_children(child)
            layers += sub_layers
            packed += sub_packed
    return layers, packed
