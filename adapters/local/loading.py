"""Finding and loading a local Qwen3-VL checkpoint: config, device and dtype choice, the CPU speed
modes (int8 quantization, prepacking, compile: ``adapters.local.modes``), errors.

Every ``from_pretrained`` tries local files first (a directory, or the Hugging Face cache) and
contacts the Hub only when that fails and the Hub is allowed (not ``local_files_only``, not
``HF_HUB_OFFLINE``, and the name looks like ``owner/name`` rather than a path). A model that
cannot be had raises ``ModelUnavailable`` with a message that says what to do, never the
library's text.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import AutoModelForImageTextToText, GenerationConfig

from adapters.base import ModelUnavailable
from adapters.local.cache import CacheConfig
from adapters.local.compiling import CompileFailed
from adapters.local.generation import ModelRunner
from adapters.local.modes import ModeChoices, apply_modes, modes_refusal
from adapters.local.packing import PREPACK_CHOICES
from adapters.local.quantize import quantize_refusal

__all__ = (
    "LocalModelConfig",
    "from_pretrained",
    "load_runner",
    "resolve_device",
    "resolve_dtype",
)

T = TypeVar("T")

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_DEVICES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class LocalModelConfig:
    """What local model to load and how."""

    model: str = ""
    """A checkpoint directory or a hub id (tried in the local cache first)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub id; None is the default branch. Also the
    ``Capabilities.revision`` that cache keys carry."""
    dtype: str = "auto"
    """``auto``, ``bfloat16`` or ``float32``. ``auto``: bfloat16 on CUDA and on CPUs with native
    bf16 (avx512_bf16 or AMX), else float32."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` (or ``cuda:N``) or ``mps``. ``auto``: CUDA, else MPS, else
    CPU."""
    threads: int = 0
    """torch intra-op threads (process-wide); 0 keeps torch's default (one per core)."""
    prepack: str = "auto"
    """``auto``, ``on`` or ``off``: the language model's (and lm_head's) Linear layers hold
    their weights prepacked for oneDNN (``adapters.local.packing``), which makes a decode step
    for a few sequences cost little more than for one. ``auto``: on for float32 on the CPU
    when oneDNN is available; ``on``: the same, but an error where it cannot apply."""
    quantize: str = "none"
    """``none`` or ``int8``: the language model's Linear layers become dynamic int8 ones
    (``adapters.local.quantize``; float32 on the CPU only, lm_head stays float32)."""
    quantize_vision: bool = False
    """The vision encoder's Linear layers become dynamic int8 ones (float32 on the CPU only)."""
    quantize_head: bool = False
    """lm_head becomes int8 too (with ``quantize = int8``); for measuring (``bench/``) before it
    is offered as a setting: it changes the logits most directly."""
    compile: bool = False
    """``torch.compile`` the language model's norms and MLP activations at load
    (``adapters.local.compiling``); a failure to compile stops the start-up."""
    max_context: int = 32768
    """Tokens (prompt + completion) served, at most; capped by the model's own limit."""
    max_images: int = 8
    """Images per request, at most (reported in capabilities)."""
    local_files_only: bool = False
    """Never contact the Hugging Face Hub: use local directories and the local cache only."""
    warmup: bool = True
    """Run a short generation with a small image in ``start()`` so the first request is not slow."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """Embedding and prefix (key/value) cache sizes (TOML table ``[cache]``)."""
    max_batch_size: int = 8
    """Sequences in the running batch (decoding or prefilling) at once; more wait."""
    step_tokens: int = 256
    """Tokens of model work per scheduling step, at most: one decode token per running sequence,
    then prefill chunks, then vision-encoder blocks (``adapters.local.worker``)."""
    step_seconds: float = 0.5
    """Target length of a step (how long running streams wait for a token while others start):
    the budget is sized to it from the measured prefill speed, within ``step_tokens``; 0: always
    ``step_tokens``."""
    kv_bytes: int = 0
    """Key/value memory the running sequences may hold, in bytes (the prefix cache has its own
    ``cache.prefix_bytes``); 0: half the memory free after loading, less the prefix cache."""
    fair_wait_s: float = 30.0
    """A generation waiting longer than this starts before any newer one, whatever its owner
    (otherwise an owner with fewer running sequences goes first)."""

    @property
    def modes(self) -> ModeChoices:
        return ModeChoices(
            self.prepack, self.quantize, self.quantize_vision, self.quantize_head, self.compile
        )

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", *_DTYPES):
            raise ValueError(f"dtype must be auto, bfloat16 or float32, not {self.dtype!r}")
        if self.prepack not in PREPACK_CHOICES:
            raise ValueError(f"prepack must be auto, on or off, not {self.prepack!r}")
        if self.device != "auto" and self.device.split(":")[0] not in _DEVICES:
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, not {self.device!r}")
        if self.max_context < 1 or self.max_images < 0 or self.threads < 0:
            raise ValueError("max_context must be positive; max_images and threads not negative")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.step_tokens <= self.max_batch_size:
            raise ValueError("step_tokens must exceed max_batch_size (one decode token each)")
        if self.kv_bytes < 0 or self.fair_wait_s < 0 or self.step_seconds < 0:
            raise ValueError("kv_bytes, fair_wait_s and step_seconds must not be negative")
        # An explicit dtype or device that int8 cannot use is refused now; with auto, at load.
        device = torch.device("cpu" if self.device == "auto" else self.device)
        refusal = quantize_refusal(
            self.quantize,
            self.quantize_vision,
            self.quantize_head,
            device,
            _DTYPES.get(self.dtype, torch.float32),
        )
        if refusal is not None:
            raise ValueError(refusal)


def resolve_device(choice: str) -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice != "auto":
        return _DTYPES[choice]
    if device.type == "cuda" or (device.type == "cpu" and _cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


@functools.cache
def _cpu_has_native_bf16() -> bool:
    # bf16 matmuls are only fast with avx512_bf16 or AMX; elsewhere they are emulated and slower
    # than float32. torch's capability string does not report these, so read the CPU flags.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return "AMX" in torch.backends.cpu.get_cpu_capability()


def from_pretrained(
    loader: Callable[..., T], source: str, config: LocalModelConfig, **kwargs: Any
) -> T:
    """``loader(source, ...)`` from local files first, then from the Hub where allowed."""
    revision = config.revision
    try:
        return loader(source, revision=revision, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        local_error: Exception = exc
    # A hub id is exactly "owner/name"; anything else is a path that does not hold a model.
    looks_local = os.path.isabs(source) or source.startswith(".") or source.count("/") != 1
    if looks_local or config.local_files_only or _hub_offline():
        raise ModelUnavailable(_unavailable_message(source, looks_local)) from local_error
    try:
        return loader(source, revision=revision, **kwargs)
    except Exception as exc:
        raise ModelUnavailable(_unavailable_message(source, False)) from exc


def load_runner(source: str, config: LocalModelConfig, tokenizer: Any) -> ModelRunner:
    """Load the weights (call on the worker thread: the runner belongs to it)."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    refusal = modes_refusal(config.modes, device, dtype)
    if refusal is not None:  # before reading gigabytes of weights
        raise ModelUnavailable(f"Cannot load the model as configured: {refusal}.")
    extra: dict[str, Any] = {"device_map": str(device)} if device.type == "cuda" else {}
    model: Any = from_pretrained(
        AutoModelForImageTextToText.from_pretrained, source, config, dtype=dtype, **extra
    )
    model.to(device)
    model.eval()
    # Last: int8 and packed weights are not tensors that .to() or a dtype change can convert.
    try:
        modes = apply_modes(model, config.modes, device, dtype)
    except CompileFailed as exc:  # the setting cannot apply, so the start-up stops
        logger.error("compile = true failed", exc_info=exc)
        raise ModelUnavailable(
            f"Cannot load the model as configured: compile = true failed ({exc}; the server log "
            "has the details); set compile = false."
        ) from exc
    for line in modes.describe():
        logger.info("model weights: %s", line)
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    eos_ids = [eos] if isinstance(eos, int) else list(eos)
    pad = model.generation_config.pad_token_id
    pad = eos_ids[0] if pad is None else pad
    # Only the end-of-turn ids are kept from the checkpoint: its recommended sampling defaults
    # (Qwen3-VL: top_k 20, temperature 0.7) must not leak into requests that did not ask.
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id
    )
    return ModelRunner(model, tokenizer, eos_token_ids=eos_ids, pad_token_id=pad, modes=modes)


def _hub_offline() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _unavailable_message(source: str, looks_local: bool) -> str:
    if looks_local:
        return (
            f"No model found at {source!r}: it is not a readable model directory "
            "(config.json, processor files and weights)."
        )
    return (
        f"Model {source!r} is not in the local Hugging Face cache and could not be downloaded "
        "(offline, no network, or no access). Download it first (hf download "
        f"{source}) or pass the path of a local checkpoint directory."
    )
