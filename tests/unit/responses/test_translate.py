"""A Responses request as the chat request the one pipeline serves: input items, instructions,
format, tools, history, and the refusals, each naming the Responses field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.chat import protocol as wire
from gateway.chat.tool_protocol import NamedToolChoice
from gateway.errors import GatewayError, InvalidJSON, InvalidValue, UnsupportedParameter
from gateway.responses.items import decode_create
from gateway.responses.protocol import FunctionCallItem, MessageItem, OutputText
from gateway.responses.translate import check_supported, plan
from tests.unit.responses.support import IMAGE, create


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    work = plan(create(input="Describe it.", instructions="Be brief.", max_output_tokens=7))
    chat = work.chat
    assert [m.role for m in chat.messages] == ["system", "user"]
    assert chat.messages[0].content == "Be brief."
    assert chat.messages[1].content == [wire.TextPart("Describe it.")]
    assert chat.max_completion_tokens == 7
    # The instructions are not part of the stored conversation.
    assert len(work.items) == 1
    assert isinstance(work.items[0], MessageItem)


def test_message_items_with_every_part() -> None:
    content = [
        {"type": "input_text", "text": "Compare these."},
        {"type": "input_image", "image_url": IMAGE, "detail": "low"},
        {"type": "input_image", "file_id": "file-abc", "detail": "original"},
        {"type": "input_file", "file_id": "file-pdf"},
        {
            "type": "input_file",
            "file_data": "data:application/pdf;base64,JVBE",
            "filename": "a.pdf",
        },
    ]
    chat = plan(create(input=[{"role": "user", "content": content}])).chat
    assert chat.messages[0].content == [
        wire.TextPart("Compare these."),
        wire.ImageURLPart(wire.ImageURL(url=IMAGE, detail="low")),
        wire.ImageURLPart(wire.ImageURL(file_id="file-abc", detail="high")),
        wire.FilePart(wire.FileRef(file_id="file-pdf")),
        wire.FilePart(wire.FileRef(file_data="data:application/pdf;base64,JVBE", filename="a.pdf")),
    ]


def test_roles_and_assistant_history() -> None:
    items = [
        {"type": "message", "role": "developer", "content": "Answer in French."},
        {"type": None, "role": "user", "content": "Hi"},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Bonjour", "annotations": []}],
        },
        {"role": "user", "content": [{"type": "input_text", "text": "Again"}]},
    ]
    work = plan(create(input=items))
    assert [(m.role, m.content) for m in work.chat.messages] == [
        ("developer", [wire.TextPart("Answer in French.")]),
        ("user", [wire.TextPart("Hi")]),
        ("assistant", [wire.TextPart("Bonjour")]),
        ("user", [wire.TextPart("Again")]),
    ]
    assistant = work.items[2]
    assert isinstance(assistant, MessageItem)
    assert assistant.id == "msg_1"
    assert assistant.content == [OutputText(text="Bonjour")]
    assert len({item.id for item in work.items}) == 4  # every stored item has an id


def test_function_calls_join_the_assistant_turn_and_outputs_are_tool_messages() -> None:
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "rain"}],
        },
    ]
    work = plan(create(input=items))
    _user, assistant, first, second = work.chat.messages
    assert assistant.content == [wire.TextPart("Let me look.")]
    assert [c.id for c in assistant.tool_calls or ()] == ["c1", "c2"]
    assert (first.role, first.tool_call_id, first.content) == ("tool", "c1", "sunny")
    assert second.content == [wire.TextPart("rain")]
    call = work.items[2]
    assert isinstance(call, FunctionCallItem)
    assert call.id.startswith("fc_")


def test_a_call_without_text_is_its_own_assistant_message() -> None:
    items = [
        {"role": "user", "content": "Time?"},
        {"type": "function_call", "call_id": "c1", "name": "now", "arguments": "{}"},
    ]
    assistant = plan(create(input=items)).chat.messages[1]
    assert (assistant.role, assistant.content) == ("assistant", None)
    assert [c.function.name for c in assistant.tool_calls or ()] == ["now"]


def test_history_comes_first_and_is_not_resent() -> None:
    first = plan(
        create(
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": IMAGE, "detail": "auto"}],
                }
            ]
        )
    )
    answer = MessageItem(id="msg_a", role="assistant", content=[OutputText(text="A cat.")])
    work = plan(create(input="What colour?"), [*first.items, answer])
    assert [m.role for m in work.chat.messages] == ["user", "assistant", "user"]
    assert isinstance(work.chat.messages[0].content, list)
    assert isinstance(work.chat.messages[0].content[0], wire.ImageURLPart)
    assert [item.id for item in work.items[:2]] == [first.items[0].id, "msg_a"]


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "count", "schema": schema, "strict": True}
    chat = plan(create(input="Count.", text={"format": fmt})).chat
    assert chat.response_format == wire.ResponseFormatWire(
        "json_schema", wire.JSONSchemaWire("count", schema, True)
    )
    chat = plan(create(input="JSON.", text={"format": {"type": "json_object"}})).chat
    assert chat.response_format == wire.ResponseFormatWire("json_object")
    assert plan(create(input="x", text={"format": {"type": "text"}})).chat.response_format is None


def test_flat_function_tools_and_tool_choice() -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather.",
        "parameters": {"type": "object"},
        "strict": True,
    }
    chat = plan(
        create(
            input="Weather?",
            tools=[tool],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
        )
    ).chat
    assert chat.tools is not None
    function = chat.tools[0].function
    assert (function.name, function.description, function.strict) == (
        "get_weather",
        "Weather.",
        True,
    )
    assert isinstance(chat.tool_choice, NamedToolChoice)
    assert chat.tool_choice.function.name == "get_weather"
    assert chat.parallel_tool_calls is False
    assert (
        plan(create(input="x", tools=[tool], tool_choice="required")).chat.tool_choice == "required"
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"reasoning": {"effort": None, "summary": "auto"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"include": [{"not": "a string"}]}, "include"),
        ({"reasoning": "high"}, "reasoning"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ],
)
def test_known_unsupported_fields_are_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        check_supported(create(input="x", **fields))
    assert caught.value.param == param
    assert param in caught.value.message


def test_neutral_values_of_unsupported_fields_pass() -> None:
    check_supported(
        create(
            input="x",
            background=False,
            truncation="disabled",
            reasoning={"effort": "none"},
            include=["reasoning.encrypted_content"],
            top_logprobs=0,
            text={"verbosity": "medium"},
            store=False,
            max_tool_calls=3,
            stream_options={"include_obfuscation": False},
        )
    )


def translate(body: dict[str, Any]) -> None:
    request = decode_create(json.dumps(body).encode())
    check_supported(request)
    plan(request)


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, UnsupportedParameter, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, InvalidValue, "tools[0].name"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, InvalidValue, "tools[0].name"),
        ({"tool_choice": {"type": "file_search"}}, UnsupportedParameter, "tool_choice"),
        ({"input": [{"type": "reasoning", "summary": []}]}, UnsupportedParameter, "input[0].type"),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            UnsupportedParameter,
            "input[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            InvalidValue,
            "input[0].content[0]",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}],
                    }
                ]
            },
            UnsupportedParameter,
            "input[0].content[0].file_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "video"}]}]},
            InvalidValue,
            "input[0].content[0].type",
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, InvalidValue, "input[0].role"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            InvalidValue,
            "input[0]",
        ),
        ({"input": []}, InvalidValue, "input"),
        ({"input": None}, InvalidValue, "input"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    fields: dict[str, Any], error: type[GatewayError], param: str
) -> None:
    with pytest.raises(error) as caught:
        translate({"model": "m", "input": "x", **fields})
    assert caught.value.param == param, caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "input": "x", "temperature": 3}', "temperature"),
        (b'{"model": "m", "input": "x", "max_output_tokens": 0}', "max_output_tokens"),
        (
            b'{"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}',
            "text.format",
        ),
        (b'{"input": "x"}', ""),
        (b'{"model": "m", "input": "x", "metadata": {"k": 1}}', "metadata[...]"),
    ],
)
def test_invalid_values_name_the_field(body: bytes, param: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        decode_create(body)
    assert (caught.value.param or "") == param


def test_bad_json_is_invalid_json() -> None:
    with pytest.raises(InvalidJSON):
        decode_create(b"{")
