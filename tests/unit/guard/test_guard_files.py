"""``file://`` image URLs: off by default, and only under configured roots."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ImageBytesTooLarge, ImageError, ImageFetchFailed, ImageUrlNotAllowed
from gateway.guard import ImageGuard
from tests.unit.guard.conftest import PARAM, assert_clean, image_bytes, ref

MakeGuard = Callable[..., ImageGuard]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.png").write_bytes(image_bytes((120, 80)))
    (tmp_path / "images" / "sub dir").mkdir()
    (tmp_path / "images" / "sub dir" / "dog.png").write_bytes(image_bytes((80, 120)))
    (tmp_path / "secret.png").write_bytes(image_bytes((50, 50)))
    (tmp_path / "images" / "escape.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "images-evil").mkdir()
    (tmp_path / "images-evil" / "x.png").write_bytes(image_bytes((50, 50)))
    return tmp_path


async def test_file_urls_are_off_by_default(make_guard: MakeGuard, tree: Path) -> None:
    with pytest.raises(ImageUrlNotAllowed) as info:
        await make_guard().prepare([ref((tree / "images" / "cat.png").as_uri())])
    assert info.value.param == PARAM
    assert_clean(info.value)


async def test_files_under_a_root_are_read(make_guard: MakeGuard, tree: Path) -> None:
    guard = make_guard(file_roots=[str(tree / "images")])
    cat, dog = await guard.prepare(
        [
            ref((tree / "images" / "cat.png").as_uri()),
            ref("file://localhost" + str(tree / "images" / "sub%20dir" / "dog.png")),
        ]
    )
    assert cat.report.source == "file"
    assert cat.report.original_size == (120, 80)
    assert dog.report.original_size == (80, 120)


@pytest.mark.parametrize(
    "path",
    [
        "secret.png",  # outside the root
        "images/escape.png",  # symlink pointing outside
        "images/../secret.png",  # dot segments
        "images/%2e%2e/secret.png",  # encoded dot segments
        "images-evil/x.png",  # shares a string prefix with the root
    ],
)
async def test_paths_outside_the_roots_are_refused(
    make_guard: MakeGuard, tree: Path, path: str
) -> None:
    guard = make_guard(file_roots=[str(tree / "images")])
    with pytest.raises(ImageUrlNotAllowed) as info:
        await guard.prepare([ref(f"file://{tree}/{path}")])
    assert str(tree) not in info.value.message


@pytest.mark.parametrize("url", ["file://evil.example/etc/passwd", "file:relative.png"])
async def test_remote_or_relative_file_urls_are_refused(
    make_guard: MakeGuard, tree: Path, url: str
) -> None:
    with pytest.raises(ImageUrlNotAllowed):
        await make_guard(file_roots=[str(tree)]).prepare([ref(url)])


async def test_non_files_and_missing_files_fail_cleanly(make_guard: MakeGuard, tree: Path) -> None:
    os.mkfifo(tree / "images" / "pipe.png")
    guard = make_guard(file_roots=[str(tree / "images")], fetch_timeout_s=1)
    for name in ("pipe.png", "sub dir", "missing.png"):
        with pytest.raises(ImageFetchFailed) as info:
            await guard.prepare([ref((tree / "images" / name).as_uri())])
        assert str(tree) not in info.value.message


async def test_file_size_cap(make_guard: MakeGuard, tree: Path) -> None:
    big = tree / "images" / "big.bmp"
    big.write_bytes(image_bytes((400, 400), "BMP"))
    guard = make_guard(file_roots=[str(tree / "images")], max_image_bytes=100_000)
    with pytest.raises(ImageBytesTooLarge) as info:
        await guard.prepare([ref(big.as_uri())])
    assert isinstance(info.value, ImageError)
    assert info.value.status == 413
