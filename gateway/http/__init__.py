"""The HTTP surface: route handlers, API keys, rate limits, admission and client disconnects.

The app factory (``gateway.app``) mounts the controllers and installs the guards; everything
below a handler is the chat service's (``gateway.chat``).
"""

from __future__ import annotations

from gateway.http.admission import Admission, Ticket
from gateway.http.auth import Caller, KeyGuard, caller_of
from gateway.http.ratelimit import RateLimiter

__all__ = ("Admission", "Caller", "KeyGuard", "RateLimiter", "Ticket", "caller_of")
