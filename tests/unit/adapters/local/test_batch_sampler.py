"""Sampler: one sequence's token choice with its own parameters, processors and generator."""

from __future__ import annotations

import torch

from adapters.base import SamplingParams
from adapters.local.sequence import Sampler

CPU = torch.device("cpu")


def logits(seed: int = 0, vocab: int = 50) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed))


class Ban:
    """A logits processor (``response_format`` stand-in) that records the ids it was shown."""

    def __init__(self, token: int) -> None:
        self.token = token
        self.seen: list[list[int]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.seen.append(input_ids[0].tolist())
        scores[:, self.token] = -float("inf")
        return scores


def test_greedy_is_the_arg_max_after_the_processors() -> None:
    row = logits()
    best = int(row.argmax())
    ban = Ban(best)
    sampler = Sampler(SamplingParams(max_tokens=4, temperature=0.0), (ban,), CPU)
    assert sampler.generator is None
    choice = sampler.choose([1, 2, 3], row.clone())
    assert choice == int(torch.topk(row, 2).indices[1])
    assert ban.seen == [[1, 2, 3]]


def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone() -> None:
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=42)
    state = torch.random.get_rng_state()

    def draw(sampler: Sampler) -> list[int]:
        return [sampler.choose([], logits(i)) for i in range(20)]

    first, again = draw(Sampler(params, (), CPU)), draw(Sampler(params, (), CPU))
    other = draw(Sampler(SamplingParams(max_tokens=4, temperature=1.0, seed=43), (), CPU))
    assert first == again
    assert first != other
    assert torch.equal(torch.random.get_rng_state(), state)
    unseeded = [draw(Sampler(SamplingParams(max_tokens=4, temperature=1.0), (), CPU))]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert unseeded[0] != first


def test_top_p_keeps_only_the_nucleus_and_temperature_sharpens() -> None:
    row = torch.full((10,), -10.0)
    row[3], row[7] = 5.0, 4.0  # about 73% and 27% of the mass; the rest ~0
    nucleus = Sampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=1), (), CPU)
    assert {nucleus.choose([], row.clone()) for _ in range(50)} == {3}
    wide = Sampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, seed=1), (), CPU)
    assert {wide.choose([], row.clone()) for _ in range(200)} == {3, 7}
    cold = Sampler(SamplingParams(max_tokens=1, temperature=0.05, seed=1), (), CPU)
    assert {cold.choose([], row.clone()) for _ in range(50)} == {3}


def test_processors_apply_before_sampling() -> None:
    row = torch.zeros(5)
    row[2] = 50.0
    sampler = Sampler(SamplingParams(max_tokens=1, temperature=1.0, seed=3), (Ban(2),), CPU)
    assert all(sampler.choose([9], row.clone()) != 2 for _ in range(20))


def test_subnormal_temperatures_decode_greedily_instead_of_overflowing() -> None:
    row = logits(3)
    for temperature in (1e-320, 5e-324, 1e-6):
        sampler = Sampler(SamplingParams(max_tokens=4, temperature=temperature), (), CPU)
        assert sampler.generator is None  # greedy: no draw, so no inf/nan probabilities
        assert sampler.choose([1], row.clone()) == int(row.argmax())
    sampled = Sampler(SamplingParams(max_tokens=4, temperature=1e-4, seed=1), (), CPU)
    assert sampled.generator is not None
    assert sampled.choose([1], row.clone()) == int(row.argmax())  # sharp, but finite
