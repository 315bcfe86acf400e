"""Strict RFC 2397 parsing: header grammar, base64 validation, length before decoding."""

from __future__ import annotations

import base64

import pytest

from gateway.errors import ImageBytesTooLarge, InvalidImage
from gateway.guard.sources import DataURL, decode_data_url, parse_data_url
from tests.unit.guard.conftest import PARAM, assert_clean

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 20).decode()


def parse(url: str, max_bytes: int = 1 << 20) -> DataURL:
    return parse_data_url(url, max_bytes=max_bytes, param=PARAM)


def parse_and_decode(url: str) -> bytes:
    return decode_data_url(parse(url), param=PARAM)


@pytest.mark.parametrize(
    ("url", "mediatype"),
    [
        (f"data:image/png;base64,{PNG_B64}", "image/png"),
        (f"DATA:IMAGE/PNG;BASE64,{PNG_B64}", "image/png"),
        (f"data:image/png;name=a.png;charset=x;base64,{PNG_B64}", "image/png"),
        (f"data:;base64,{PNG_B64}", None),
    ],
)
def test_valid_headers_decode_exactly(url: str, mediatype: str | None) -> None:
    parsed = parse(url)
    assert parsed.mediatype == mediatype
    assert decode_data_url(parsed, param=PARAM) == base64.b64decode(PNG_B64)
    assert parsed.decoded_length == len(base64.b64decode(PNG_B64))


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png," + PNG_B64,  # not base64: percent-encoded bytes are refused
        "data:image/png;base64" + PNG_B64,  # no comma
        "data:image/png;base64,",  # empty
        "data:image;base64," + PNG_B64,  # no subtype
        "data:image/png;bad param;base64," + PNG_B64,
        "data:image/png;a=b=c;base64," + PNG_B64,
        "data:image/p ng;base64," + PNG_B64,
        "data:" + "x" * 300 + ";base64," + PNG_B64,  # header too long to be real
        "data:image/png;base64," + PNG_B64[:-1],  # not a multiple of 4
        "http://example.com/a.png",
    ],
)
def test_malformed_headers_are_invalid_image(url: str) -> None:
    with pytest.raises(InvalidImage) as info:
        parse(url)
    assert info.value.param == PARAM
    assert info.value.status == 400
    assert_clean(info.value)


@pytest.mark.parametrize(
    "payload",
    [
        "iVBO RwAA",  # whitespace
        "iVBO\nRwAA",
        "iVBO-_AA",  # URL-safe alphabet
        "iVBO%2BAA",  # percent escape
        "AA==AAAA",  # padding in the middle
        "AAAé",  # non-ASCII
    ],
)
def test_payload_outside_the_standard_alphabet_is_refused(payload: str) -> None:
    with pytest.raises(InvalidImage) as info:
        parse_and_decode(f"data:image/png;base64,{payload}")
    assert "base64" in info.value.message
    assert_clean(info.value)


def test_length_is_checked_before_decoding() -> None:
    # 40 MB of base64 text that is not even valid base64 ('!' everywhere): the size check must
    # refuse it from the length alone, without looking at (or decoding) the characters.
    payload = "!" * (40 * 1024 * 1024)
    with pytest.raises(ImageBytesTooLarge) as info:
        parse("data:image/png;base64," + payload, max_bytes=20 * 1024 * 1024)
    assert info.value.status == 413
    assert info.value.code == "image_too_large"
    assert info.value.param == PARAM


@pytest.mark.parametrize(("n", "pad"), [(3, ""), (4, "=="), (5, "=")])
def test_decoded_length_accounts_for_padding(n: int, pad: str) -> None:
    text = base64.b64encode(b"a" * n).decode()
    assert text.endswith(pad)
    assert parse(f"data:image/png;base64,{text}", max_bytes=n).decoded_length == n
    with pytest.raises(ImageBytesTooLarge):
        parse(f"data:image/png;base64,{text}", max_bytes=n - 1)
