"""Classify an image URL into the source it names, with the structural checks and no I/O."""

from __future__ import annotations

import httpx

from gateway.dataurl import DataURL, is_data_url, parse_data_url
from gateway.errors import ImageUrlNotAllowed, InvalidImage
from gateway.fetch import parse_remote_url
from gateway.guardconfig import GuardConfig
from gateway.localfiles import LocalFile, is_file_url, parse_file_url

__all__ = ("Source", "parse_source")

Source = DataURL | httpx.URL | LocalFile
"""A checked data URL (not decoded), a checked remote URL (not resolved), or a local file."""


def parse_source(url: str, config: GuardConfig, *, param: str) -> Source:
    """Data URLs always; ``http(s)`` when ``remote_fetch``; ``file`` under ``file_roots``."""
    if not isinstance(url, str) or not url:
        raise InvalidImage("The image URL is empty. Send a base64 data URL.", param=param)
    if is_data_url(url):
        return parse_data_url(url, max_bytes=config.max_image_bytes, param=param)
    if is_file_url(url):
        return LocalFile(parse_file_url(url, config, param=param))
    if url[:8].lower().startswith(("http://", "https://")):
        if not config.remote_fetch:
            raise ImageUrlNotAllowed(
                "Remote image URLs are disabled on this server. Send the image as a base64 "
                "data URL (data:image/png;base64,...).",
                param=param,
            )
        return parse_remote_url(url, config, param=param)
    raise ImageUrlNotAllowed(
        "Image URLs must be base64 data URLs (data:image/png;base64,...) or http(s) URLs.",
        param=param,
    )
