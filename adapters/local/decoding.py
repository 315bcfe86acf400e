"""A request's decoding constraints (``response_format``, ``tools``) as logits processors.

Compiling a grammar can be slow for a large schema, so it runs in a helper thread, bounded by
``COMPILE_TIMEOUT_S`` (the schema limits in ``adapters.local.constraints`` keep real schemas far
under it; a thread still compiling finishes on its own, its grammar cached for a retry). The
gateway calls this through ``Adapter.check`` before the request takes a generation slot; the
compiled grammars are cached, so ``stream`` repeats only the cheap part. Failures are ours:
``InvalidResponseFormat`` or ``InvalidTools``, never a library's message.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Callable
from typing import Any

from adapters.base import AdapterError, GenerationRequest, InvalidResponseFormat, InvalidTools

__all__ = ("COMPILE_TIMEOUT_S", "logits_processors")

COMPILE_TIMEOUT_S = 10.0
"""A grammar still compiling after this is refused."""


async def logits_processors(
    request: GenerationRequest, tokenizer: Any, vocab_size: int
) -> tuple[Any, ...]:
    """Fresh processors enforcing ``request``'s ``response_format`` and ``tools`` (none without
    them); raises ``InvalidResponseFormat`` or ``InvalidTools``."""
    fmt, tools, max_tokens = request.response_format, request.tools, request.sampling.max_tokens
    error: type[AdapterError]
    if tools is not None:
        what, error = "tools", InvalidTools
        slow = "The tools' parameters schemas took too long to compile; simplify them."
        toolgrammar: Any = importlib.import_module("adapters.local.toolgrammar")
        compile_: Callable[[], tuple[Any, ...]] = functools.partial(
            toolgrammar.tool_processors, tools, fmt, tokenizer, vocab_size, max_tokens=max_tokens
        )
    elif fmt is not None:
        what, error = "response_format", InvalidResponseFormat
        slow = "The response_format schema took too long to compile; simplify it."
        try:
            # Looked up at each call (tests stand in another module).
            constraints: Any = importlib.import_module("adapters.local.constraints")
        except ImportError as exc:
            raise InvalidResponseFormat("response_format unavailable") from exc

        def compile_() -> tuple[Any, ...]:
            return (
                constraints.logits_processor_for(fmt, tokenizer, vocab_size, max_tokens=max_tokens),
            )
    else:
        return ()
    try:
        return await asyncio.wait_for(asyncio.to_thread(compile_), COMPILE_TIMEOUT_S)
    except TimeoutError as exc:
        raise error(slow) from exc
    except AdapterError:
        raise
    except Exception as exc:
        raise error(f"The {what} could not be compiled.") from exc
