"""The local engine's scheduler series: what each step did, key/value memory, waits, token gaps.

``EngineMetrics`` is the local engine's ``EngineObserver`` (``adapters.local.jobs``), called from
the model's worker thread (prometheus_client metrics are thread-safe). The kinds of work are the
scheduler's own bounded set: ``decode``, ``prefill`` and ``encode``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ("EngineMetrics",)

WORK_KINDS = ("decode", "prefill", "encode")

STEP_TOKENS = Counter(
    "vlm_gateway_engine_step_tokens",
    "Tokens of model work done by the local engine's scheduling steps, by kind (decode tokens, "
    "prefill tokens, vision-encoder work in prefill-token equivalents).",
    ("kind",),
)
STEP_SECONDS = Histogram(
    "vlm_gateway_engine_step_seconds",
    "Seconds of wall time of one scheduling step of the local engine (the longest a running "
    "stream waits for its next token).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
)
KV_BYTES = Gauge(
    "vlm_gateway_engine_kv_bytes", "Key/value bytes held by the running sequences now."
)
KV_BUDGET_BYTES = Gauge(
    "vlm_gateway_engine_kv_budget_bytes",
    "Key/value bytes the running sequences may hold (0: no budget).",
)
MEMORY_WAITS = Counter(
    "vlm_gateway_engine_memory_waits",
    "Generations that waited for key/value memory before they could start.",
)
TOKEN_GAP = Histogram(
    "vlm_gateway_engine_token_gap_seconds",
    "Seconds between two consecutive tokens of one sequence (inter-token latency).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
)

for _kind in WORK_KINDS:
    STEP_TOKENS.labels(_kind)


class EngineMetrics:
    """The local engine's ``EngineObserver``: scheduler events become the engine series."""

    def step(self, spent: dict[str, int], seconds: float) -> None:
        for kind, tokens in spent.items():
            if kind in WORK_KINDS:
                STEP_TOKENS.labels(kind).inc(tokens)
        STEP_SECONDS.observe(seconds)

    def memory(self, in_use: int, budget: int) -> None:
        KV_BYTES.set(in_use)
        KV_BUDGET_BYTES.set(budget)

    def memory_wait(self) -> None:
        MEMORY_WAITS.inc()

    def token_gap(self, seconds: float) -> None:
        TOKEN_GAP.observe(seconds)
