"""Per-request budgets (images, bytes, visual tokens), detail and router pixel budgets, the
fidelity warnings, and the structural ``inspect`` stage."""

from __future__ import annotations

import httpx
import pytest

from adapters.base import Capabilities
from gateway.errors import (
    ImageBytesTooLarge,
    ImageTooLarge,
    ImageTooSmall,
    ImageUrlNotAllowed,
    InvalidImage,
    InvalidValue,
    TooManyImages,
)
from gateway.guard.guard import WARNINGS, GuardConfig, pixel_budget
from tests.unit.guard.conftest import (
    CAPS,
    MakeGuard,
    StaticResolver,
    assert_clean,
    data_url,
    image_bytes,
    noise_bytes,
    ref,
)

SMALL_PNG = data_url(image_bytes((64, 48)))


def part(i: int) -> str:
    return f"messages[2].content[{i}].image_url"


# -- image count ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "caps", "limit"),
    [({}, CAPS, 8), ({"max_images": 2}, CAPS, 2), ({}, Capabilities("m", max_images=3), 3)],
)
async def test_too_many_images_points_at_the_first_excess_part(
    make_guard: MakeGuard, config: dict[str, int], caps: Capabilities, limit: int
) -> None:
    guard = make_guard(caps=caps, **config)
    refs = [ref(SMALL_PNG, param=part(i)) for i in range(limit + 1)]
    with pytest.raises(TooManyImages) as info:
        await guard.prepare(refs)
    assert info.value.param == part(limit)
    assert info.value.code == "too_many_images"
    assert str(limit) in info.value.message
    assert len(await guard.prepare(refs[:limit])) == limit


async def test_limits_are_enforced_before_any_fetch(make_guard: MakeGuard) -> None:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    resolver = StaticResolver({"images.example": ["93.184.216.34"]})
    guard = make_guard(resolver=resolver, transport=httpx.MockTransport(record))
    remote = [ref("https://images.example/a.png", param=part(i)) for i in range(8)]
    with pytest.raises(TooManyImages):
        await guard.prepare([*remote, ref(SMALL_PNG, param=part(8))])
    # A bad data URL late in the request also stops the downloads before they start.
    with pytest.raises(InvalidImage) as info:
        await guard.prepare([*remote[:3], ref("data:image/png;base64,@@@=", param=part(3))])
    assert info.value.param == part(3)
    assert requests == []
    assert resolver.calls == []


# -- bytes ------------------------------------------------------------------------------------


async def test_bytes_per_image_and_per_request(make_guard: MakeGuard) -> None:
    data = image_bytes((300, 300), "BMP")  # 270 KB
    guard = make_guard(max_image_bytes=200_000)
    with pytest.raises(ImageBytesTooLarge) as info:
        await guard.prepare([ref(data_url(data), param=part(0))])
    assert info.value.status == 413
    assert info.value.param == part(0)

    guard = make_guard(max_image_bytes=300_000, max_request_image_bytes=600_000)
    refs = [ref(data_url(data), param=part(i)) for i in range(3)]
    with pytest.raises(ImageBytesTooLarge) as info:
        await guard.prepare(refs)
    assert info.value.status == 413
    assert info.value.param == part(2)
    assert len(await guard.prepare(refs[:2])) == 2


# -- pixel budgets ----------------------------------------------------------------------------


def test_pixel_budget_rules() -> None:
    config = GuardConfig()
    assert pixel_budget("low", config, CAPS) == config.detail_low_pixels
    assert pixel_budget("auto", config, CAPS) == config.detail_auto_pixels
    assert pixel_budget("high", config, CAPS) == CAPS.max_pixels
    # The router's per-task budget is the auto budget; low never exceeds it; high is the
    # operator's ceiling, so high means more pixels than auto for the same task.
    assert pixel_budget("auto", config, CAPS, 2_097_152) == 2_097_152
    assert pixel_budget("high", config, CAPS, 2_097_152) == CAPS.max_pixels
    assert pixel_budget("low", config, CAPS, 100_000) == 100_000
    assert pixel_budget("low", config, CAPS, 2_097_152) == config.detail_low_pixels
    for task_budget in (589_824, 1_003_520, 2_097_152):
        assert pixel_budget("high", config, CAPS, task_budget) > task_budget
    # ...but never raises the configured ceiling, nor goes below the model's floor.
    capped = GuardConfig(max_pixels=500_000)
    assert pixel_budget("auto", capped, CAPS, 4_000_000) == 500_000
    assert pixel_budget("high", capped, CAPS) == 500_000
    assert pixel_budget("auto", config, CAPS, 1_000) == CAPS.min_pixels


@pytest.mark.parametrize(
    ("detail", "max_pixels", "ceiling"),
    [
        ("low", None, 262_144),
        ("auto", None, 1_048_576),
        ("high", None, 16_777_216),
        ("auto", 200_000, 200_000),
        ("high", 200_000, 16_777_216),
    ],
)
async def test_model_size_respects_the_budget(
    make_guard: MakeGuard, detail: str, max_pixels: int | None, ceiling: int
) -> None:
    guard = make_guard()
    url = data_url(noise_bytes((2400, 1800), "JPEG", quality=85), "image/jpeg")
    (prepared,) = await guard.prepare([ref(url, detail)], max_pixels=(max_pixels,))
    w, h = prepared.input.image.size
    assert w * h <= ceiling
    assert w % 32 == 0
    assert h % 32 == 0
    assert CAPS.fit(w, h) == (w, h)  # the processor will not resize it again
    assert prepared.report.visual_tokens == CAPS.image_tokens(w, h)
    assert prepared.report.original_size == (2400, 1800)
    assert ("downscaled_for_budget" in prepared.report.warnings) == (ceiling < 2400 * 1800)


async def test_each_image_has_its_own_router_budget(make_guard: MakeGuard) -> None:
    """The router budgets images one by one (a conversation's older image keeps its size)."""
    guard = make_guard()
    url = data_url(noise_bytes((2400, 1800), "JPEG", quality=85), "image/jpeg")
    refs = [ref(url, param=part(0)), ref(url, param=part(1)), ref(url, param=part(2))]
    budgets = (2_097_152, 589_824, None)
    prepared = await guard.prepare(refs, max_pixels=budgets)
    sizes = [p.input.image.size for p in prepared]
    assert sizes == [CAPS.fit(2400, 1800, b) for b in (2_097_152, 589_824, 1_048_576)]
    assert sizes[0][0] * sizes[0][1] > sizes[2][0] * sizes[2][1] > sizes[1][0] * sizes[1][1]
    assert [p.input.image.size for p in await guard.prepare(refs)] == [sizes[2]] * 3
    with pytest.raises(ValueError, match="2 pixel budgets for 3 images"):
        await guard.prepare(refs, max_pixels=budgets[:2])


async def test_invalid_detail_is_refused(make_guard: MakeGuard) -> None:
    with pytest.raises(InvalidValue) as info:
        await make_guard().prepare([ref(SMALL_PNG, "ultra", param=part(1))])
    assert info.value.param == part(1) + ".detail"


# -- visual tokens ----------------------------------------------------------------------------


async def test_visual_token_budget_per_request(make_guard: MakeGuard) -> None:
    url = data_url(image_bytes((1024, 768)))
    guard = make_guard(max_visual_tokens=1000)
    (one,) = await guard.prepare([ref(url, param=part(0))])
    assert one.report.visual_tokens == 768  # 1024x768 -> 32 x 24 tokens
    with pytest.raises(ImageTooLarge) as info:
        await guard.prepare([ref(url, param=part(0)), ref(url, param=part(1))])
    assert info.value.param == part(1)
    assert "1536" in info.value.message
    assert "1000" in info.value.message
    assert_clean(info.value)
    # A client may lower its cost with detail=low and then fit.
    both = await guard.prepare([ref(url, "low", part(0)), ref(url, "low", part(1))])
    assert sum(p.report.visual_tokens for p in both) <= 1000


# -- warnings ---------------------------------------------------------------------------------


async def test_fidelity_warnings(make_guard: MakeGuard) -> None:
    guard = make_guard()
    tiny, doc, wide, exact = await guard.prepare(
        [
            ref(data_url(image_bytes((20, 20))), param=part(0)),
            ref(data_url(image_bytes((4000, 3000))), param=part(1)),
            ref(data_url(image_bytes((1000, 40))), param=part(2)),
            ref(data_url(image_bytes((1024, 768))), param=part(3)),
        ],
        text_heavy=True,
    )
    assert "upscaled" in tiny.report.warnings
    assert tiny.report.model_size[0] * tiny.report.model_size[1] >= CAPS.min_pixels
    assert {"downscaled_for_budget", "low_resolution_for_text"} <= set(doc.report.warnings)
    assert "aspect_ratio_changed" in wide.report.warnings
    assert exact.report.warnings == ()
    assert exact.report.model_size == (1024, 768)
    for prepared in (tiny, doc, wide, exact):
        assert set(prepared.report.warnings) <= WARNINGS

    (photo,) = await guard.prepare([ref(data_url(image_bytes((4000, 3000))))])
    assert "low_resolution_for_text" not in photo.report.warnings  # not a text task


async def test_results_keep_request_order_and_the_failing_part_is_named(
    make_guard: MakeGuard,
) -> None:
    guard = make_guard()
    sizes = [(64, 48), (300, 200), (50, 400)]
    refs = [ref(data_url(image_bytes(s)), param=part(i)) for i, s in enumerate(sizes)]
    prepared = await guard.prepare(refs)
    assert [p.report.original_size for p in prepared] == sizes
    bad = [*refs[:2], ref(data_url(image_bytes((4, 4))), param=part(2))]
    with pytest.raises(ImageTooSmall) as info:
        await guard.prepare(bad)
    assert info.value.param == part(2)
    assert await guard.prepare([]) == []


# -- structural checks ----------------------------------------------------------------------


async def test_structural_checks_refuse_before_any_decoding(make_guard: MakeGuard) -> None:
    guard = make_guard(remote_fetch=False, max_images=2)
    with pytest.raises(ImageUrlNotAllowed):
        await guard.prepare([ref("https://images.example/a.png")])
    with pytest.raises(TooManyImages):
        await guard.prepare([ref(SMALL_PNG)] * 3)
    with pytest.raises(ImageBytesTooLarge):  # 30 MB decoded > 20 MB, judged from the length alone
        await guard.prepare([ref("data:image/png;base64," + "A" * 40_000_000)])
