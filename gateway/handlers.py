"""Render every failure as the OpenAI error envelope.

Litestar's own exceptions (404, 405, 413, 429, validation) are translated to our hierarchy here,
so exactly one function decides the shape of an error response. Unexpected exceptions become a
generic 500 and are logged with their traceback server-side only.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    TooManyRequestsException,
)
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import ExceptionHandlersMap

from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    RequestTooLarge,
)

__all__ = ("error_response", "exception_handlers", "translate")

log = logging.getLogger("gateway.errors")


def translate(exc: BaseException) -> GatewayError:
    """Map any exception to a ``GatewayError`` whose message is safe to show."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, NotFoundException):
        return NotFound("Unknown endpoint or resource.")
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowed("Method not allowed for this endpoint.")
    if isinstance(exc, NotAuthorizedException):
        return AuthenticationError()
    if isinstance(exc, TooManyRequestsException):
        return RateLimited("Rate limit exceeded.", headers={"Retry-After": "1"})
    if isinstance(exc, HTTPException):
        if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            return RequestTooLarge("Request body is too large.")
        if 400 <= exc.status_code < 500:
            return InvalidRequest("Invalid request.")
    log.error("unhandled exception", exc_info=exc)
    return InternalError()


def error_response(error: GatewayError) -> Response[Any]:
    return Response(
        content=error.body(),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


def _handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = translate(exc)
    request.state.error_code = error.code
    return error_response(error)


exception_handlers: ExceptionHandlersMap = {Exception: _handle}
