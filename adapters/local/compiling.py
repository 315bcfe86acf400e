"""``torch.compile`` of the language model's cache-free elementwise work (``[model] compile``).

What is compiled: every RMSNorm of the language model (each decoder layer's two, the attention's
query and key norms, the final norm) and each MLP's activation-times-gate, each one fused kernel
instead of 4-6 separate passes and dispatches. The Linear layers stay outside the compiled code
and keep whatever ``prepack`` and ``quantize`` made of them (inductor refuses oneDNN-packed
weights as graph inputs, and int8 dynamic Linears break its graph at every call), so compile
composes with both.

Why not the whole forward or the whole decoder layer: the engine's key/value caches are Python
objects updated in place (``adapters.local.kvbatch``), and dynamo traces into them. Measured on
the tiny model (torch 2.14, transformers 5.24): compiling the language model's forward failed in
inductor on the first batched decode step (``size_bytes_is_heap_allocated_`` in
``aten.set_.source_Storage``); compiling each decoder layer guarded on the cache's type and
length and on each layer's index, recompiling past dynamo's limit of 8 (then silently eager),
with stalls of 15-45 s whenever a new batch shape came.

Shapes: the compiled functions see rows flattened to 2-D, ``(tokens, features)``, marked dynamic,
so a prefill chunk and a decode step of any batch share two shape classes (one row, several
rows: dynamo specialises sizes of 1); both are compiled at load (``warm``), never under traffic,
and a failure to compile stops the start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapters.local.packing import language_model

__all__ = ("CompileFailed", "CompileReport", "apply_compile")


class CompileFailed(RuntimeError):
    """``compile = true`` cannot apply: torch could not compile; the cause is chained."""


@dataclass(frozen=True)
class CompileReport:
    """What ``apply_compile`` did, for the start-up log and the cache keys."""

    norms: int = 0
    mlps: int = 0
    seconds: float = 0.0

    @property
    def applied(self) -> bool:
        return bool(self.norms or self.mlps)

    def describe(self) -> str:
        if not self.applied:
            return "compile off"
        return (
            f"compile on: torch.compile (inductor, dynamic shapes) of {self.norms} RMSNorms and "
            f"{self.mlps} MLP activations of the language model, Linear layers left as they are; "
            f"compiled for 1 and several rows in {self.seconds:.1f} s"
        )


def _rms_norm(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    # The module's own forward, traced: the same arithmetic, fused.
    out: torch.Tensor = module(rows)
    return out


def _gate(act: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = act(gate) * up
    return out


class _Compiled:
    """The two compiled functions, built once per process: dynamo caches compiled code per code
    object, so every layer's norm shares one entry per shape class instead of one per layer."""

    norm: Callable[..., torch.Tensor] | None = None
    gate: Callable[..., torch.Tensor] | None = None

    @classmethod
    def functions(cls) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
        if cls.norm is None or cls.gate is None:
            cls.norm = torch.compile(_rms_norm, dynamic=True)
            cls.gate = torch.compile(_gate, dynamic=True)
        return cls.norm, cls.gate


class CompiledNorm(nn.Module):
    """An RMSNorm run by the shared compiled function on its rows flattened to 2-D."""

    norm: Any

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn, _ = _Compiled.functions()
        return fn(self.norm, x.reshape(-1, x.shape[-1])).reshape(x.shape)


class CompiledGateMLP(nn.Module):
    """A gated MLP, ``down(act(gate(x)) * up(x))``, whose activation-times-gate is compiled; the
    three Linear layers run as they are (packed, int8 or plain)."""

    mlp: Any

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, fn = _Compiled.functions()
        mlp = self.mlp
        rows = x.reshape(-1, x.shape[-1])
        hidden = fn(mlp.act_fn, mlp.gate_proj(rows), mlp.up_proj(rows))
        out: torch.Tensor = mlp.down_proj(hidden)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def apply_compile(model: Any, enabled: bool) -> CompileReport:
    """Wrap the language model's RMSNorms and gated MLPs (in place) and compile them for one and
    for several rows now. Raises ``CompileFailed`` (naming the cause) when torch cannot."""
    if not enabled:
        return CompileReport()
    start = time.perf_counter()
    norms, mlps = _wrap(language_model(model))
    if not norms and not mlps:
        raise CompileFailed("found no RMSNorm or gated MLP in the language model")
    try:
        warm(model)
    except Exception as exc:  # inductor raises many types; the cause is chained and logged
        raise CompileFailed(f"torch.compile raised {type(exc).__name__}") from exc
    return CompileReport(norms, mlps, time.perf_counter() - start)


def _wrap(module: nn.Module) -> tuple[int, int]:
    norms = mlps = 0
    for name, child in list(module.named_children()):
        kind = type(child).__name__
        if kind.endswith("RMSNorm") and hasattr(child, "variance_epsilon"):
            setattr(module, name, CompiledNorm(child))
            norms += 1
        elif all(hasattr(child, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            setattr(module, name, CompiledGateMLP(child))
            mlps += 1
        else:
            sub_norms, sub_mlps = _wrap(child)
            norms, mlps = norms + sub_norms, mlps + sub_mlps
    return norms, mlps


def warm(model: Any) -> None:
    """Run every compiled module once on 1 and on 2 rows, as the worker runs them (inference
    mode), so compilation happens at load and a failure surfaces there."""
    param = next(p for p in model.parameters() if p.is_floating_point())
    with torch.inference_mode():
        for module in language_model(model).modules():
            if isinstance(module, CompiledNorm):
                size = int(module.norm.weight.shape[-1])
            elif isinstance(module, CompiledGateMLP):
                size = int(module.mlp.gate_proj.in_features)
            else:
                continue
            for rows in (1, 2):
                module(torch.zeros(rows, size, dtype=param.dtype, device=param.device))
