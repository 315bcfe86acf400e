"""The response object: its request echo, its output items, usage, status and errors.

Status follows OpenAI: ``completed``; ``incomplete`` with ``incomplete_details.reason ==
"max_output_tokens"`` when the answer was cut by the token limit (its items are ``incomplete``
too, and it has no ``completed_at``); ``failed`` with ``error`` when a stream broke after it
started. ``temperature`` and ``top_p`` are the values generation used (the router may set them
for a task when the client did not).
"""

from __future__ import annotations

import time

import msgspec

from gateway.chat import protocol as wire
from gateway.chat.service import PreparedChat
from gateway.errors import GatewayError
from gateway.responses.items import new_item_id
from gateway.responses.protocol import (
    CreateResponse,
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    Item,
    ItemStatus,
    MessageItem,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    TextConfig,
)

__all__ = (
    "completion_output",
    "failed",
    "failure_code",
    "finished",
    "item_status",
    "response_usage",
    "started",
)

# The codes the SDK's ``ResponseError`` admits that ours can be (others map by kind below).
_SDK_CODES = frozenset({"invalid_image", "image_too_large", "image_too_small"})


def started(
    request: CreateResponse, chat: PreparedChat, response_id: str, created_at: int
) -> ResponseObject:
    """The response as it begins (``in_progress``, no output): the request's echo."""
    sampling = chat.generation.sampling
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        status="in_progress",
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        max_tool_calls=request.max_tool_calls,
        model=request.model,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        previous_response_id=request.previous_response_id,
        prompt_cache_key=request.prompt_cache_key,
        safety_identifier=request.safety_identifier,
        store=request.store is not False,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        text=request.text or TextConfig(),
        tool_choice=request.tool_choice or "auto",
        tools=list(request.tools or ()),
        user=request.user,
        metadata=dict(request.metadata or {}),
    )


def item_status(finish_reason: str | None) -> ItemStatus:
    return "incomplete" if finish_reason == "length" else "completed"


def finished(
    response: ResponseObject, output: list[Item], finish_reason: str | None, usage: wire.Usage
) -> ResponseObject:
    incomplete = finish_reason == "length"
    return msgspec.structs.replace(
        response,
        status="incomplete" if incomplete else "completed",
        completed_at=None if incomplete else int(time.time()),
        incomplete_details=IncompleteDetails("max_output_tokens") if incomplete else None,
        output=output,
        usage=response_usage(usage),
    )


def failed(response: ResponseObject, error: GatewayError, output: list[Item]) -> ResponseObject:
    return msgspec.structs.replace(
        response,
        status="failed",
        error=ResponseError(failure_code(error), error.message),
        output=output,
    )


def failure_code(error: GatewayError) -> str:
    """Our error as one of the codes OpenAI's ``response.error`` has."""
    if error.code in _SDK_CODES:
        return str(error.code)
    if error.status == 429:
        return "rate_limit_exceeded"
    return "server_error" if error.status >= 500 else "invalid_prompt"


def response_usage(usage: wire.Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(usage.prompt_tokens_details.cached_tokens),
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def completion_output(completion: wire.ChatCompletion) -> list[Item]:
    """The output items of a whole answer: its text as a message (also when it is empty and
    nothing was called, as OpenAI answers), then one ``function_call`` per call."""
    choice = completion.choices[0]
    status = item_status(choice.finish_reason)
    message = choice.message
    calls = message.tool_calls or []
    items: list[Item] = []
    if message.content or not calls:
        text = OutputText(text=message.content or "")
        items.append(
            MessageItem(id=new_item_id("msg"), status=status, role="assistant", content=[text])
        )
    for call in calls:
        items.append(
            FunctionCallItem(
                id=new_item_id("fc"),
                status=status,
                call_id=call.id,
                name=call.function.name,
                arguments=call.function.arguments,
            )
        )
    return items
