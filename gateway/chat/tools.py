"""Function calling in the gateway: a request's tools checked, a backend's calls in OpenAI's shapes.

Policy:

- ``request_tools`` checks what the wire types cannot: unique function names, parameters that
  describe an object, a named ``tool_choice`` that is one of the tools, ``required`` or a named
  choice only with tools. Every refusal is a 400 naming the field. ``tools: []`` means no tools
  (as it always did here).
- ``backend_tools``: a backend whose ``Capabilities.supports_tools`` is false refuses tools that
  could be called (400 naming ``tools``); under ``tool_choice: "none"`` nothing could call them,
  so they are dropped and the request is answered as text.
- A call goes out as OpenAI sends it: ``message.tool_calls`` with ``content`` null when no text
  came before the calls; streamed, the first chunk of a call carries ``id``, ``type`` and
  ``function.name`` with ``arguments: ""`` and later chunks only argument text.
- ``CallWatch`` feeds ``vlm_gateway_tool_calls_total`` (``gateway.observability.tool_metrics``):
  ``call`` per call returned; ``malformed`` for an answer that could have called a tool, called
  none and carries ``TOOL_CALL_MARKER`` in its text (an engine that renders calls as Hermes-style
  ``<tool_call>`` blocks, as Qwen's chat template and vLLM's ``hermes`` parser do, wrote a call
  it could not parse, and the client got it as text); ``missing`` when a call was required
  (``required`` or a named function) and none came, with no marker either (cut by
  ``max_tokens``, or an upstream that ignored ``tool_choice``). A marker is model output, never a
  label value, so the series stay bounded.
"""

from __future__ import annotations

from adapters.base import (
    Capabilities,
    Completion,
    Delta,
    StreamEvent,
    ToolCallDelta,
    ToolChoice,
    Tools,
    ToolSpec,
)
from gateway.chat import protocol as wire
from gateway.chat.tool_protocol import (
    ChunkFunction,
    ChunkToolCall,
    FunctionCallWire,
    NamedToolChoice,
    ToolCallWire,
)
from gateway.errors import InvalidValue, UnsupportedParameter
from gateway.observability import tool_metrics

__all__ = (
    "TOOL_CALL_MARKER",
    "CallWatch",
    "backend_tools",
    "chunk_calls",
    "request_tools",
    "response_message",
)

TOOL_CALL_MARKER = "<tool_call>"
"""Text that opens a Hermes-style call; in a text answer it means a call the engine could not
parse (``malformed`` in the metrics)."""


def request_tools(request: wire.ChatCompletionRequest) -> Tools | None:
    """The request's tools and how they may be used; None when it offers none."""
    choice = request.tool_choice
    if not request.tools:
        if isinstance(choice, NamedToolChoice) or choice == "required":
            raise InvalidValue(
                "'tool_choice' asks for a function call, but the request has no 'tools'.",
                param="tool_choice",
            )
        return None
    specs: list[ToolSpec] = []
    for i, tool in enumerate(request.tools):
        function, where = tool.function, f"tools[{i}].function"
        if any(s.name == function.name for s in specs):
            raise InvalidValue(
                f"Function names must be unique; '{function.name}' is defined twice.",
                param=f"{where}.name",
            )
        parameters = function.parameters
        if parameters is not None and parameters.get("type", "object") != "object":
            # The arguments of a call are always a JSON object.
            raise InvalidValue(
                "A function's 'parameters' must be the JSON Schema of an object.",
                param=f"{where}.parameters",
            )
        specs.append(
            ToolSpec(function.name, function.description or "", parameters, bool(function.strict))
        )
    named: str | None = None
    mode: ToolChoice = "auto"
    if isinstance(choice, NamedToolChoice):
        named, mode = choice.function.name, "function"
        if all(s.name != named for s in specs):
            raise InvalidValue(
                f"'tool_choice' names the function '{named[:64]}', which is not in 'tools'.",
                param="tool_choice",
            )
    elif choice is not None:
        mode = choice
    parallel = request.parallel_tool_calls is not False  # OpenAI's default: parallel calls
    return Tools(tuple(specs), mode, named, parallel)


def backend_tools(tools: Tools | None, capabilities: Capabilities, model: str) -> Tools | None:
    """``tools`` as the backend will get them; raises when it cannot honour them."""
    if tools is None or capabilities.supports_tools:
        return tools
    if not tools.callable:
        return None  # tool_choice "none": described only, and this backend cannot describe them
    raise UnsupportedParameter(
        f"The model '{model[:64]}' does not support tools (function calling) on this server. "
        "Send the request without 'tools', or with 'tool_choice': 'none'.",
        param="tools",
    )


def response_message(completion: Completion) -> wire.ResponseMessage:
    """The ``message`` of a non-streaming answer."""
    if not completion.tool_calls:
        return wire.ResponseMessage(content=completion.text)
    calls = [
        ToolCallWire(id=c.id, function=FunctionCallWire(c.name, c.arguments))
        for c in completion.tool_calls
    ]
    return wire.ResponseMessage(content=completion.text or None, tool_calls=calls)


def chunk_calls(delta: ToolCallDelta) -> list[ChunkToolCall]:
    """The ``delta.tool_calls`` pieces of one backend event, one per chunk: a call's first
    event becomes the header piece (its arguments, if any, follow in a piece of their own, so
    the header always reads ``"arguments": ""`` as OpenAI's does)."""
    pieces: list[ChunkToolCall] = []
    if delta.id is not None:
        header = ChunkFunction(name=delta.name or "", arguments="")
        pieces.append(
            ChunkToolCall(index=delta.index, id=delta.id, type="function", function=header)
        )
    if delta.arguments:
        pieces.append(
            ChunkToolCall(index=delta.index, function=ChunkFunction(arguments=delta.arguments))
        )
    return pieces


class CallWatch:
    """Follows one answer's events and counts its calls (see the module's policy)."""

    def __init__(self, tools: Tools | None, model: str | None) -> None:
        self.model = model
        self.offered = tools is not None and bool(tools.callable)
        self.required = self.offered and tools is not None and tools.choice != "auto"
        self.calls = 0
        self.marked = False
        self._tail = ""  # the end of the text so far: a marker may span two deltas

    def see(self, event: StreamEvent) -> None:
        if isinstance(event, ToolCallDelta):
            self.calls += event.id is not None
        elif isinstance(event, Delta) and self.offered and not self.marked:
            text = self._tail + event.text
            self.marked = TOOL_CALL_MARKER in text
            self._tail = text[-(len(TOOL_CALL_MARKER) - 1) :]

    def finish(self) -> None:
        """The answer is complete: count it."""
        if self.calls:
            tool_metrics.count_tool_calls("call", self.calls, model=self.model)
        elif self.marked:
            tool_metrics.count_tool_calls("malformed", model=self.model)
        elif self.required:
            tool_metrics.count_tool_calls("missing", model=self.model)
