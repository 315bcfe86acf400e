"""One error hierarchy for every failure a client can see.

Each error carries the HTTP status, OpenAI's error ``type``, a stable ``code`` and the ``param``
it concerns. The message is always ours: library exception text never reaches a client (Pillow's
messages contain heap addresses, httpx's contain internal addresses). Translate third-party
exceptions where they enter, with ``raise OurError(...) from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = (
    "AuthenticationError",
    "ClientDisconnected",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "FileNotFound",
    "FileTooLarge",
    "GatewayError",
    "ImageBytesTooLarge",
    "ImageError",
    "ImageFetchFailed",
    "ImageTooLarge",
    "ImageTooSmall",
    "ImageUrlNotAllowed",
    "InternalError",
    "InvalidFile",
    "InvalidHost",
    "InvalidImage",
    "InvalidJSON",
    "InvalidRequest",
    "InvalidValue",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseNotFound",
    "ServerOverloaded",
    "ServiceUnavailable",
    "StorageQuotaExceeded",
    "TaskNotSupported",
    "TooManyImages",
    "UnsupportedImageFormat",
    "UnsupportedMediaType",
    "UnsupportedParameter",
)


class GatewayError(Exception):
    """Base of every error rendered to a client as ``{"error": {...}}``.

    Subclasses fix ``status``, ``type`` and ``code``; instances carry the message and ``param``.
    ``headers`` are added to the HTTP response (``Retry-After``, ``WWW-Authenticate``).
    """

    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]  # an instance may refine its class's code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The OpenAI error envelope."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# -- 400 invalid_request_error --------------------------------------------------------------


class InvalidRequest(GatewayError):
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidValue(InvalidRequest):
    code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ImageError(InvalidRequest):
    """Base of every refusal of one image; ``param`` points at the image part."""

    code = "invalid_image"


class InvalidImage(ImageError):
    code = "invalid_image"


class UnsupportedImageFormat(ImageError):
    code = "unsupported_image_format"


class ImageTooLarge(ImageError):
    """Pixel, side or visual-token limits (400); byte caps are ``ImageBytesTooLarge`` (413)."""

    code = "image_too_large"


class ImageBytesTooLarge(ImageError):
    status = 413
    code = "image_too_large"


class ImageTooSmall(ImageError):
    code = "image_too_small"


class TooManyImages(ImageError):
    code = "too_many_images"


class ImageUrlNotAllowed(ImageError):
    code = "image_url_not_allowed"


class ImageFetchFailed(ImageError):
    code = "image_url_fetch_failed"


class InvalidFile(InvalidRequest):
    """An uploaded or inline file that cannot be used: an unaccepted type, a malformed,
    encrypted or over-complex PDF; ``code`` refines it (``encrypted_file``, ``too_many_pages``)."""

    code = "invalid_file"


class FileTooLarge(InvalidFile):
    status = 413
    code = "file_too_large"


class StorageQuotaExceeded(InvalidRequest):
    """The key's stored files would exceed its quota (not a 429: retrying cannot help)."""

    code = "storage_quota_exceeded"


class UnsupportedMediaType(InvalidRequest):
    """A JSON endpoint got a body that does not say it is JSON (a browser's text/plain form)."""

    status = 415
    code = "unsupported_media_type"


class RequestTimeout(InvalidRequest):
    """The client did not send its whole body in time (a slow client holding a connection)."""

    status = 408
    code = "request_timeout"


class InvalidHost(InvalidRequest):
    """The Host header names no host this server answers for (DNS rebinding)."""

    code = "invalid_host"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class FileNotFound(NotFound):
    """An unknown, foreign, deleted or expired file id (indistinguishable on purpose)."""

    code = "file_not_found"


class ResponseNotFound(NotFound):
    """An unknown, foreign, deleted or expired stored response id."""

    code = "response_not_found"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class ClientDisconnected(InvalidRequest):
    """The client went away before its response started; nobody reads this (nginx's 499)."""

    status = 499
    code = "client_disconnected"


class TaskNotSupported(InvalidRequest):
    """The router decided the task is beyond the model and policy says refuse."""

    status = 422
    code = "task_not_supported"


# -- other types ----------------------------------------------------------------------------


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    """503; ``code`` is one of ``server_overloaded``, ``not_ready``, ``shutting_down``."""

    status = 503
    type = "server_error"
    code = "not_ready"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class ServerOverloaded(ServiceUnavailable):
    code = "server_overloaded"


class DeadlineExceeded(GatewayError):
    status = 504
    type = "server_error"
    code = "timeout"


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self, message: str = "The server had an error while processing your request."
    ) -> None:
        super().__init__(message)
