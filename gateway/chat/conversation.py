"""From wire messages to the neutral shapes the router, the guard and the adapter consume.

This is the "inspect" stage: structural checks with no I/O. It decides which message roles and
parts are acceptable and names the exact ``param`` of anything refused.

Files: a ``file`` part (``file_id`` or inline ``file_data``) and an ``image_url`` part naming an
uploaded image by ``file_id`` become ``FileInput`` attachments; ``gateway.files.attach`` expands
them (an image, or a PDF's pages and text) before the guard sees the conversation.

Function calling: an assistant turn may carry ``tool_calls`` (its content null or text); a
``tool`` turn carries the result of one call, named by ``tool_call_id``, which must be the id
of a call an earlier assistant turn made. Images stay allowed in user turns only. The legacy
``function`` role and ``function_call`` field are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from msgspec import UNSET

from adapters.base import ContentPart, ImageInput, Message, Role, ToolCall
from gateway.chat.protocol import ChatMessage, FilePart, ImageURLPart, TextPart
from gateway.errors import InvalidValue, UnsupportedParameter
from gateway.guard.guard import ImageRef
from gateway.routing.classifier import TurnView

__all__ = ("Conversation", "FileInput", "parse_messages")

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


@dataclass(frozen=True)
class FileInput:
    """A file part, or an image part naming an upload; not yet read."""

    param: str
    file_id: str | None
    data: str | None
    """Inline ``file_data``: a data URL or bare base64."""
    filename: str | None
    detail: Literal["auto", "low", "high"] = "auto"
    image_only: bool = False
    """From ``image_url.file_id``: the file must be an image."""


@dataclass(frozen=True)
class _Turn:
    role: Role
    parts: tuple[str | int, ...]
    """Text segments, and indexes into ``Conversation.images`` for image and file parts."""
    calls: tuple[ToolCall, ...] = ()
    """An assistant turn's function calls."""
    call_id: str | None = None
    """A tool turn: the call it answers."""


@dataclass(frozen=True)
class Conversation:
    """A validated conversation whose images are still references (not yet fetched)."""

    turns: tuple[_Turn, ...]
    images: tuple[ImageRef | FileInput, ...]
    """Images, and files until ``expand`` replaces them."""

    @property
    def files(self) -> tuple[tuple[int, FileInput], ...]:
        return tuple((i, f) for i, f in enumerate(self.images) if isinstance(f, FileInput))

    def image_refs(self) -> tuple[ImageRef, ...]:
        """The images, once every file is expanded."""
        refs = tuple(i for i in self.images if isinstance(i, ImageRef))
        if len(refs) != len(self.images):
            raise RuntimeError("files must be expanded before the images are prepared")
        return refs

    def expand(self, contents: Mapping[int, Sequence[str | ImageRef]]) -> Conversation:
        """Replace the attachment at each index of ``contents`` by its text and images (a
        PDF's pages), in place in its turn."""
        images: list[ImageRef | FileInput] = []
        spliced: dict[int, tuple[str | int, ...]] = {}
        for index, item in enumerate(self.images):
            parts: list[str | int] = []
            for piece in contents.get(index, (item,)):
                if isinstance(piece, str):
                    parts.append(piece)
                else:
                    parts.append(len(images))
                    images.append(piece)
            spliced[index] = tuple(parts)
        turns = tuple(
            replace(
                t,
                parts=tuple(
                    q for p in t.parts for q in (spliced[p] if isinstance(p, int) else (p,))
                ),
            )
            for t in self.turns
        )
        return Conversation(turns, tuple(images))

    @property
    def has_system(self) -> bool:
        return any(t.role == "system" for t in self.turns)

    def last_user_text(self) -> str:
        user = [t for t in self.turns if t.role == "user"]
        return "\n".join(p for p in user[-1].parts if isinstance(p, str)) if user else ""

    def views(self) -> list[TurnView]:
        """What the router reads: role, text and image count per turn."""
        return [
            TurnView(
                role=t.role,
                text="\n".join(p for p in t.parts if isinstance(p, str)),
                image_count=sum(1 for p in t.parts if isinstance(p, int)),
            )
            for t in self.turns
        ]

    def messages(
        self, images: Sequence[ImageInput], system_prompt: str | None = None
    ) -> tuple[Message, ...]:
        """Internal messages with prepared images.

        System messages are merged into one leading system message: Qwen's chat template drops
        a system message that is not first, and a client's instruction must not vanish. The
        router's task instruction is used only when the client sent no system message.
        """
        system = [p for t in self.turns if t.role == "system" for p in t.parts]
        out = []
        if system:
            out.append(Message("system", ("\n\n".join(str(p) for p in system),)))
        elif system_prompt:
            out.append(Message("system", (system_prompt,)))
        for turn in self.turns:
            if turn.role == "system":
                continue
            content: tuple[ContentPart, ...] = tuple(
                images[p] if isinstance(p, int) else p for p in turn.parts
            )
            out.append(Message(turn.role, content, turn.calls, turn.call_id))
        return tuple(out)


def parse_messages(messages: Sequence[ChatMessage]) -> Conversation:
    turns: list[_Turn] = []
    images: list[ImageRef | FileInput] = []
    call_ids: set[str] = set()  # ids of the calls made so far: what a tool turn may answer
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = _ROLES.get(message.role)
        if role is None:
            raise UnsupportedParameter(
                f"Messages with role '{message.role}' are not supported by this server "
                "(legacy function calling: use 'tools' and messages with role 'tool').",
                param=f"{where}.role",
            )
        if message.function_call is not UNSET and message.function_call is not None:
            raise UnsupportedParameter(
                "Legacy 'function_call' messages are not supported by this server; use "
                "'tool_calls'.",
                param=f"{where}.function_call",
            )
        calls = _calls(message, role, where)
        call_ids.update(c.id for c in calls)
        call_id = _answered_call(message, role, where, call_ids)
        parts: list[str | int] = []
        content = message.content
        if content is None:
            if role != "assistant":
                raise InvalidValue(
                    f"Messages with role '{message.role}' must have content.",
                    param=f"{where}.content",
                )
        elif isinstance(content, str):
            parts.append(content)
        else:
            for j, part in enumerate(content):
                if isinstance(part, TextPart):
                    parts.append(part.text)
                else:
                    parts.append(len(images))
                    images.append(_attachment(part, role, f"{where}.content[{j}]"))
        turns.append(_Turn(role, tuple(parts), calls, call_id))
    if not any(t.role == "user" for t in turns):
        raise InvalidValue("At least one message with role 'user' is required.", param="messages")
    return Conversation(tuple(turns), tuple(images))


def _attachment(part: ImageURLPart | FilePart, role: Role, where: str) -> ImageRef | FileInput:
    if isinstance(part, FilePart):
        param, kind, ref = f"{where}.file", "File", part.file
        _exactly_one(param, file_id=ref.file_id, file_data=ref.file_data)
        item: ImageRef | FileInput = FileInput(param, ref.file_id, ref.file_data, ref.filename)
    else:
        param, kind, image = f"{where}.image_url", "Image", part.image_url
        _exactly_one(param, url=image.url, file_id=image.file_id)
        if image.url is not None:
            item = ImageRef(image.url, image.detail, param)
        else:
            item = FileInput(param, image.file_id, None, None, image.detail, image_only=True)
    if role != "user":
        raise InvalidValue(
            f"{kind} content parts are only allowed in messages with role 'user'.",
            param=param,
        )
    return item


def _exactly_one(param: str, **fields: str | None) -> None:
    """Refuse (400 naming them) unless exactly one of ``fields`` is set."""
    if sum(value is not None for value in fields.values()) != 1:
        names = " or ".join(f"'{n}'" for n in fields)
        raise InvalidValue(f"Exactly one of {names} must be set.", param=param)


def _calls(message: ChatMessage, role: Role, where: str) -> tuple[ToolCall, ...]:
    """An assistant turn's calls; ``tool_calls`` anywhere else is refused."""
    if not message.tool_calls:
        return ()
    if role != "assistant":
        raise InvalidValue(
            "Only messages with role 'assistant' may have 'tool_calls'.",
            param=f"{where}.tool_calls",
        )
    return tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls)


def _answered_call(message: ChatMessage, role: Role, where: str, call_ids: set[str]) -> str | None:
    """A tool turn's ``tool_call_id``, which must name a call made earlier in the conversation
    (a result without its call cannot be placed in the prompt)."""
    if role != "tool":
        return None
    if not message.tool_call_id:
        raise InvalidValue(
            "Messages with role 'tool' need 'tool_call_id': the id of the call they answer.",
            param=f"{where}.tool_call_id",
        )
    if message.tool_call_id not in call_ids:
        raise InvalidValue(
            "'tool_call_id' must be the id of a call in an earlier assistant message's "
            "'tool_calls'.",
            param=f"{where}.tool_call_id",
        )
    return message.tool_call_id
