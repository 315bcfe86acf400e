"""From wire messages to the neutral shapes the router, the guard and the adapter consume.

This is the "inspect" stage: structural checks with no I/O. It decides which message roles and
parts are acceptable and names the exact ``param`` of anything refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from msgspec import UNSET

from adapters.base import ContentPart, ImageInput, Message, Role
from gateway.chat.protocol import ChatMessage, ImageURLPart, TextPart
from gateway.errors import InvalidValue, UnsupportedParameter
from gateway.guard.guard import ImageRef
from gateway.routing.classifier import TurnView

__all__ = ("Conversation", "parse_messages")

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class _Turn:
    role: Role
    parts: tuple[str | int, ...]
    """Text segments, and indexes into ``Conversation.images`` for image parts."""


@dataclass(frozen=True)
class Conversation:
    """A validated conversation whose images are still references (not yet fetched)."""

    turns: tuple[_Turn, ...]
    images: tuple[ImageRef, ...]

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
            out.append(Message(turn.role, content))
        return tuple(out)


def parse_messages(messages: Sequence[ChatMessage]) -> Conversation:
    turns: list[_Turn] = []
    images: list[ImageRef] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = _ROLES.get(message.role)
        if role is None:
            raise UnsupportedParameter(
                f"Messages with role '{message.role}' are not supported by this server "
                "(tool and function calling are not available).",
                param=f"{where}.role",
            )
        if message.tool_calls is not UNSET and message.tool_calls not in (None, []):
            raise UnsupportedParameter(
                "Tool calls are not supported by this server.", param=f"{where}.tool_calls"
            )
        if message.function_call is not UNSET and message.function_call is not None:
            raise UnsupportedParameter(
                "Function calls are not supported by this server.", param=f"{where}.function_call"
            )
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
                elif isinstance(part, ImageURLPart):
                    param = f"{where}.content[{j}].image_url"
                    if role != "user":
                        raise InvalidValue(
                            "Image content parts are only allowed in messages with role 'user'.",
                            param=param,
                        )
                    parts.append(len(images))
                    images.append(ImageRef(part.image_url.url, part.image_url.detail, param))
        turns.append(_Turn(role, tuple(parts)))
    if not any(t.role == "user" for t in turns):
        raise InvalidValue("At least one message with role 'user' is required.", param="messages")
    return Conversation(tuple(turns), tuple(images))
