"""Settings of the image guard (the ``[guard]`` table of ``gateway.toml``).

Every bound the guard enforces is a field here with a safe default. Budgets a client can touch
(``detail``) and the router's per-task pixel budget only ever lower these ceilings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields

from gateway.guard.internal import parse_network

__all__ = ("GuardConfig",)

_MIB = 1024 * 1024


@dataclass(frozen=True)
class GuardConfig:
    """Limits and switches of :class:`gateway.guard.ImageGuard`. Sizes are in bytes or pixels."""

    remote_fetch: bool = True
    """Fetch ``http(s)`` image URLs (OpenAI accepts them). Off: only data URLs (and ``file://``
    under ``file_roots``) are accepted and remote URLs get ``image_url_not_allowed``."""
    allowed_domains: tuple[str, ...] = ()
    """If non-empty, remote hosts must equal one of these or be a subdomain of one."""
    denied_domains: tuple[str, ...] = ()
    """Hosts equal to or under these domains are refused (checked before ``allowed_domains``)."""
    internal_hosts: tuple[str, ...] = ()
    """Host names (each with every name under it) whose URLs may reach private addresses; the
    domain lists still apply. Loopback, link-local and metadata addresses stay refused (only an
    exact ``internal_networks`` entry opens them); see ``gateway.guard.internal``."""
    internal_networks: tuple[str, ...] = ()
    """CIDR ranges (``10.20.0.0/16``, ``fd12::/48``; a bare address is one host) remote fetches
    may reach, whatever the host name. Loopback, link-local and metadata addresses open only
    to an entry inside their own block (``127.0.0.1/32``), never to a broad one."""
    file_roots: tuple[str, ...] = ()
    """Directories ``file://`` URLs may read from (after resolving symlinks). Empty: off."""
    max_images: int = 8
    """Images per request; the model's own ``Capabilities.max_images`` applies too."""
    max_image_bytes: int = 20 * _MIB
    """Encoded bytes of one image (a data URL's decoded payload, a download counted raw)."""
    max_request_image_bytes: int = 50 * _MIB
    """Encoded bytes of all images of one request together."""
    max_url_length: int = 2048
    """Characters of an ``http(s)`` or ``file`` URL (data URLs are bounded by bytes)."""
    fetch_timeout_s: float = 10.0
    """Seconds for one remote image, start to last byte: DNS, connect, redirects and body."""
    max_redirects: int = 3
    """Redirects followed per remote image; every hop is re-validated."""
    max_concurrent_fetches: int = 8
    """Remote fetches in flight at once, across all requests of this process."""
    decode_workers: int = 2
    """Threads that sniff, decode and resize images (Pillow work never runs on the event loop)."""
    decode_queue: int = 32
    """Image jobs that may wait for a decode thread; beyond, 503 server_overloaded (a burst of
    costly images cannot queue unbounded work). A waiting job whose request was abandoned never
    runs."""
    max_jpeg_scans: int = 32
    """Scans a JPEG may have (progressive files have about 10; each scan is a pass over the
    whole image, so thousands of repeated scans make a tiny file cost seconds)."""
    max_chunks: int = 20_000
    """Chunks of a PNG or WebP, or frames and extension blocks of a GIF, before decoding."""
    max_image_pixels: int = 40_000_000
    """Width x height of an image as sent, read from its header before any decoding."""
    min_side: int = 8
    """Shortest side in pixels an image may have as sent (smaller ones: ``image_too_small``)."""
    max_side: int = 16384
    """Longest side in pixels an image may have as sent."""
    max_aspect_ratio: float = 100.0
    """Longest side over shortest side, as sent and as the model sees it (the Qwen processor
    raises at 200)."""
    max_pixels: int | None = None
    """Ceiling on pixels the model sees per image (``detail: high``); None: the model's own
    ``Capabilities.max_pixels``."""
    detail_auto_pixels: int = 1_048_576
    """Pixels the model sees per image for ``detail: auto`` (about 1024 visual tokens)."""
    detail_low_pixels: int = 262_144
    """Pixels the model sees per image for ``detail: low`` (about 256 visual tokens)."""
    max_visual_tokens: int = 16384
    """Visual tokens of all images of one request together, by the model's own rule."""
    text_glyph_px: float = 12.0
    """Assumed height in source pixels of the smallest text in a text-heavy image (body text of a
    screenshot or a 150 dpi scan); used for the ``low_resolution_for_text`` warning."""
    text_min_glyph_px: float = 8.0
    """Glyph height in model pixels below which text is not reliably read; an image scaled so
    that ``text_glyph_px`` falls below this gets ``low_resolution_for_text``."""
    jpeg_quality_warn_below: int = 70
    """A JPEG whose estimated quality (from its quantization tables) is below this gets
    ``lossy_compression``."""
    user_agent: str = "vlm-gateway-image-fetcher/0.1"
    """``User-Agent`` of remote fetches."""

    def __post_init__(self) -> None:
        # TOML arrays arrive as lists; keep the dataclass hashable and immutable.
        lists = ("allowed_domains", "denied_domains", "internal_hosts", "internal_networks")
        for name in (*lists, "file_roots"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"guard.{name} must be a list of strings")
            object.__setattr__(self, name, tuple(value))
        self._check_internal()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_redirects":
                continue  # zero is a valid choice: follow no redirects
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"guard.{f.name} must be positive, got {value!r}")
        if self.max_redirects < 0:
            raise ValueError("guard.max_redirects must not be negative")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ValueError("guard.max_pixels must be positive or absent")
        if self.max_image_bytes > self.max_request_image_bytes:
            raise ValueError("guard.max_image_bytes must not exceed max_request_image_bytes")
        if self.min_side > self.max_side:
            raise ValueError("guard.min_side must not exceed max_side")
        if self.max_aspect_ratio < 1 or self.max_aspect_ratio >= 200:
            raise ValueError("guard.max_aspect_ratio must be in [1, 200)")

    def _check_internal(self) -> None:
        # Refused at startup rather than matched loosely: a guessed meaning could widen access.
        for host in self.internal_hosts:
            name = host.strip().removeprefix("*.").strip(".")
            if not name:
                raise ValueError("guard.internal_hosts must not contain empty names")
            if _is_address(name):
                raise ValueError(
                    f"guard.internal_hosts lists host names; put the address {host!r} in "
                    "guard.internal_networks"
                )
        for entry in self.internal_networks:
            try:
                parse_network(entry)
            except ValueError:
                raise ValueError(
                    f"guard.internal_networks: {entry!r} is not a network in CIDR notation with "
                    "its host bits zero (e.g. 10.20.0.0/16, fd12:3456::/48 or 10.20.0.5)"
                ) from None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
