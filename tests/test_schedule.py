"""The cubic sparsity schedule."""

import pytest

from blockprune.engine.schedule import phase_bounds, sparsity_at


def test_endpoints_warmup_and_cooldown():
    total, final = 200, 0.8
    start, end = phase_bounds(total, 0.1, 0.2)
    assert (start, end) == (20, 160)
    assert all(sparsity_at(s, total, final, 0.1, 0.2) == 0.0 for s in range(start + 1))
    assert all(sparsity_at(s, total, final, 0.1, 0.2) == final for s in range(end, total + 5))


def test_monotone_and_cubic():
    total, final = 100, 0.9
    values = [sparsity_at(s, total, final, 0.1, 0.1) for s in range(total)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    # halfway through the ramp, 1 - (1/2)^3 = 7/8 of the final sparsity is reached
    assert sparsity_at(50, total, final, 0.1, 0.1) == pytest.approx(final * 7 / 8)


def test_no_warmup_no_cooldown():
    assert sparsity_at(0, 10, 0.5, 0.0, 0.0) == 0.0
    assert sparsity_at(10, 10, 0.5, 0.0, 0.0) == 0.5


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 10, 333])
def test_last_step_is_always_at_the_final_sparsity(total):
    assert sparsity_at(total - 1, total, 0.7, 0.1, 0.0) == 0.7


@pytest.mark.parametrize(
    "kwargs",
    [dict(final=1.0), dict(final=-0.1), dict(final=0.5, warmup=0.6, cooldown=0.5), dict(final=0.5, total_steps=0)],
)
def test_invalid_arguments(kwargs):
    args = dict(step=0, total_steps=10, final=0.5, warmup=0.1, cooldown=0.1) | kwargs
    with pytest.raises(ValueError):
        sparsity_at(**args)
