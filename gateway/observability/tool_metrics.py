"""Function-calling series: calls returned, and answers where a call went wrong.

``gateway.chat.tools.CallWatch`` records them once per answer (its module docstring says when
an answer counts as ``malformed`` or ``missing``). The ``result`` label is one of ``RESULTS``,
fixed here; the model label is bounded like every other.
"""

from __future__ import annotations

from prometheus_client import Counter

from gateway.observability.labels import bounded

__all__ = ("RESULTS", "TOOL_CALLS", "count_tool_calls")

RESULTS: tuple[str, ...] = ("call", "malformed", "missing")
"""``call``: one per function call returned; ``malformed``: an answer that wrote a call the
engine could not parse, returned as text; ``missing``: a call was required and none came."""

TOOL_CALLS = Counter(
    "vlm_gateway_tool_calls",
    "Function calling: calls returned (call), answers that wrote a call the engine could not "
    "parse and returned it as text (malformed), answers without the call tool_choice required "
    "(missing).",
    ("model", "result"),
)

for _result in RESULTS:
    TOOL_CALLS.labels("none", _result)  # the series exist (at 0) before the first call


def count_tool_calls(result: str, n: int = 1, *, model: str | None = None) -> None:
    """Count ``n`` of ``result`` (one of ``RESULTS``)."""
    if result not in RESULTS:
        raise ValueError(f"unknown tool-call result {result!r}")
    TOOL_CALLS.labels(bounded("model", model), result).inc(n)
