"""StepPacer: the step budget follows the measured speed of prefill and encoder work."""

from __future__ import annotations

from adapters.local.jobs import StepBudget, StepPacer


def spent(decode: int, prefill: int) -> StepBudget:
    budget = StepBudget(10_000)
    budget.spend("decode", decode)
    budget.spend("prefill", prefill)
    return budget


def test_the_ceiling_until_a_step_was_timed_and_when_pacing_is_off() -> None:
    assert StepPacer(256, 0.5).budget().tokens == 256
    off = StepPacer(256, 0.0)
    off.observe(spent(4, 100), 10.0)
    assert off.budget().tokens == 256


def test_a_slow_machine_gets_small_steps_and_a_fast_one_the_ceiling() -> None:
    slow = StepPacer(256, 0.5)
    slow.observe(spent(4, 256), 4.0)  # 64 prefill tokens a second
    assert slow.budget().tokens == 32  # 0.5 s of work
    slow.observe(spent(4, 32), 0.1)  # a faster step moves the estimate, smoothed
    assert 32 < slow.budget().tokens < 256
    fast = StepPacer(256, 0.5)
    fast.observe(spent(8, 256), 0.05)
    assert fast.budget().tokens == 256


def test_never_below_the_floor_and_decode_only_steps_are_not_timed() -> None:
    pacer = StepPacer(256, 0.5)
    pacer.observe(spent(8, 0), 0.4)  # decode only: says nothing about prefill speed
    assert pacer.rate is None
    pacer.observe(spent(0, 16), 60.0)
    assert pacer.budget().tokens == StepPacer.MIN_STEP_TOKENS


def test_no_pacing_while_no_stream_waits_for_a_token() -> None:
    """Small chunks only pay for running streams; alone, a request takes whole steps."""
    slow = StepPacer(256, 0.5)
    slow.observe(spent(4, 256), 4.0)
    assert slow.budget(streaming=True).tokens == 32
    assert slow.budget(streaming=False).tokens == 256
