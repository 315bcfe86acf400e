"""Chat Completions: the wire protocol, the conversation, the service and its streaming frames.

A route decodes the body (``decode_request``), asks ``ChatService.prepare`` for every check and
image before the first byte goes out, then ``complete``s or ``stream``s it.
"""

from __future__ import annotations

from gateway.chat import protocol
from gateway.chat.protocol import decode_request
from gateway.chat.service import ChatService, PreparedChat

__all__ = ("ChatService", "PreparedChat", "decode_request", "protocol")
