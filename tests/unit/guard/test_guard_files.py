"""``file://`` image URLs: off by default, and only under configured roots."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ImageBytesTooLarge, ImageError, ImageFetchFailed, ImageUrlNotAllowed
from gateway.guard import GuardConfig, ImageGuard
from gateway.guard.sources import read_file_url
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


def test_a_directory_swapped_for_a_link_never_escapes_the_root(tmp_path: Path) -> None:
    """The race the old realpath-then-open check lost: a directory under the root is swapped,
    thousands of times, for a link to a directory outside it while reads run."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "x.png").write_bytes(b"inside")
    (outside / "x.png").write_bytes(b"SECRET")
    (root / "link").symlink_to(outside)
    config = GuardConfig(file_roots=[str(root)])
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(root / "d", root / "saved")
            os.rename(root / "link", root / "d")
            os.rename(root / "d", root / "link")
            os.rename(root / "saved", root / "d")

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes: dict[str, int] = {}
    try:
        for _ in range(5000):
            try:
                data = read_file_url(str(root / "d" / "x.png"), config, param=PARAM)
                outcome = data.decode()
            except (ImageUrlNotAllowed, ImageFetchFailed) as exc:
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        stop.set()
        swapper.join()
    assert "SECRET" not in outcomes
    assert outcomes.get("inside", 0) > 0
