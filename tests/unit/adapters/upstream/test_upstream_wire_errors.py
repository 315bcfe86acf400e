"""The upstream wire format of error answers: refusals and failures become our errors, never
echoing upstream text; context-length refusals become PromptTooLong."""

from __future__ import annotations

import json

import pytest

from adapters.base import PromptTooLong
from adapters.upstream.errors import UpstreamRejected, UpstreamUnavailable, error_for_status

SECRET = "internal host 10.1.2.3 /srv/models/secret key sk-live-abc at 0x7f00deadbeef"


def openai_error(message: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": "x", "code": code}}).encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # OpenAI and vlm-gateway
            openai_error(
                "This model's maximum context length is 8192 tokens. However, you requested "
                "9000 tokens (8000 in the messages, 1000 in the completion). Please reduce.",
                "context_length_exceeded",
            ),
            (8000, 1000, 8192),
        ),
        (  # SGLang
            json.dumps(
                {
                    "object": "error",
                    "code": 400,
                    "message": "Requested token count exceeds the model's maximum context length "
                    "of 4096 tokens. You requested a total of 5000 tokens: 4500 tokens from the "
                    "input messages and 500 tokens for the completion. Please reduce.",
                }
            ).encode(),
            (4500, 500, 4096),
        ),
        (  # newer vLLM: the completion is our max_tokens
            json.dumps(
                {
                    "object": "error",
                    "message": "'max_tokens' is too large: 64. This model's maximum context "
                    "length is 2048 tokens and your request has 2000 input tokens (64 > 2048 - "
                    "2000).",
                }
            ).encode(),
            (2000, 64, 2048),
        ),
        (
            openai_error(
                "The decoder prompt (length 5000) is longer than the maximum model length of 4096."
            ),
            (5000, 64, 4096),
        ),
    ],
)
def test_context_length_errors_become_prompt_too_long(
    raw: bytes, expected: tuple[int, int, int]
) -> None:
    error = error_for_status(400, raw, {}, max_tokens=64)
    assert isinstance(error, PromptTooLong)
    assert (error.prompt_tokens, error.max_tokens, error.context_length) == expected
    assert str(error).startswith(f"This model's maximum context length is {expected[2]} tokens.")


def test_a_deeply_nested_error_body_is_still_an_error() -> None:
    error = error_for_status(400, b"[" * 100_000, {}, 8)
    assert isinstance(error, UpstreamRejected)


def test_context_length_error_without_numbers_is_rejected_with_its_code() -> None:
    error = error_for_status(
        400, openai_error(f"context length exceeded on {SECRET}", "context_length_exceeded"), {}, 8
    )
    assert isinstance(error, UpstreamRejected)
    assert error.code == "context_length_exceeded"
    assert "10.1.2.3" not in str(error)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_refusals_never_echo_upstream_text(status: int) -> None:
    error = error_for_status(status, openai_error(SECRET), {}, 8)
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.code) == (status, "invalid_request")
    for leak in ("10.1.2.3", "/srv", "sk-live", "0x7f"):
        assert leak not in str(error)


@pytest.mark.parametrize(
    ("status", "headers", "timed_out", "retry_after"),
    [
        (500, {}, False, None),
        (502, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
        (307, {"location": "http://127.0.0.1:1/elsewhere"}, False, None),
        (408, {}, True, None),
        (429, {"retry-after": "7"}, False, 7),
        (503, {"retry-after": "999999"}, False, 3600),
        (503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, False, None),
        (503, {"retry-after": "²"}, False, None),  # a digit to str.isdigit, not to int()
    ],
)
def test_unavailable_answers(
    status: int, headers: dict[str, str], timed_out: bool, retry_after: int | None
) -> None:
    error = error_for_status(status, SECRET.encode(), headers, 8)
    assert isinstance(error, UpstreamUnavailable)
    assert (error.status, error.timed_out, error.retry_after) == (status, timed_out, retry_after)
    assert "10.1.2.3" not in str(error)
