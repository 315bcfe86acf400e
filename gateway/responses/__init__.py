"""The Responses API (``/v1/responses``): a translation onto the chat completion pipeline.

``protocol`` holds the wire types; ``items`` decodes a request and its input items; ``translate``
makes the ``ChatCompletionRequest`` one pipeline serves (``params`` renames its errors' fields);
``objects`` builds the response object, ``events`` its stream, ``storage`` keeps it for
``previous_response_id`` and ``GET``; ``routes`` is the controller.
"""

from __future__ import annotations

from gateway.responses.routes import ResponsesController

__all__ = ("ResponsesController",)
