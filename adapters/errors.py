"""The failures an adapter reports to the gateway (part of the ``adapters.base`` contract).

Messages are safe to show a client: an adapter never puts a library's or an upstream's text in
them. The gateway translates each into its HTTP error in one place
(``gateway.chat.streaming.adapter_errors``).
"""

from __future__ import annotations

__all__ = (
    "AdapterError",
    "BackendRejected",
    "BackendUnavailable",
    "GenerationCancelled",
    "InvalidResponseFormat",
    "InvalidTools",
    "ModelUnavailable",
    "PromptTooLong",
)


class AdapterError(Exception):
    """Base of failures an adapter reports to the gateway; the message is safe to show."""


class PromptTooLong(AdapterError):
    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion."
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class InvalidResponseFormat(AdapterError):
    """``response_format`` cannot be enforced (e.g. an invalid or unsupported JSON schema)."""


class InvalidTools(AdapterError):
    """``tools`` cannot be enforced (a function's ``parameters`` is an invalid or unsupported JSON
    schema, too large, or no function may be called); the message names the function."""


class BackendUnavailable(AdapterError):
    """The backend cannot serve the request now (a remote engine is down, overloaded or timed
    out). The gateway answers 503 with ``Retry-After``, or 504 when ``timed_out``."""

    def __init__(
        self,
        message: str = "The model backend is unavailable.",
        *,
        status: int | None = None,
        timed_out: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        """The backend's HTTP status, when it answered with one."""
        self.timed_out = timed_out
        """True when a deadline passed (504 rather than 503)."""
        self.retry_after = retry_after
        """Seconds the backend asked to wait, bounded; None if it said nothing."""


class BackendRejected(AdapterError):
    """The backend refused this request as invalid. The message is ours, never the backend's;
    ``code`` says what kind of refusal it was (the gateway answers 400)."""

    def __init__(
        self,
        message: str = "The model backend rejected the request.",
        *,
        status: int = 400,
        code: str = "invalid_request",
    ) -> None:
        super().__init__(message)
        self.status = status
        """The backend's HTTP status."""
        self.code = code
        """``context_length_exceeded`` (numbers unknown) or ``invalid_request``."""


class ModelUnavailable(AdapterError):
    """The model cannot be loaded (not cached and no network, or not a checkpoint)."""


class GenerationCancelled(AdapterError):
    """The consumer went away; raised inside the worker, never shown to a client."""
