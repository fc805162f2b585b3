"""The sparsity schedule: a pure function of the training step.

Three phases over ``total_steps`` (decoupled from any learning-rate warm-up):

1. **warm-up** (``warmup`` fraction of the steps): sparsity stays at ``initial`` (0 = dense) while the
   scores already learn;
2. **cubic ramp**: ``s(t) = final + (initial - final) * (1 - t)^3`` with ``t`` going from 0 to 1 —
   the gradual pruning schedule of Zhu & Gupta, "To prune, or not to prune" (2017), eq. 1. It prunes
   fast while many redundant blocks remain and slowly near the target;
3. **cool-down** (``cooldown`` fraction): sparsity stays at ``final``; masks may still change.

Example:
    >>> sparsity_at(0, 100, 0.9, warmup=0.1, cooldown=0.2)
    0.0
    >>> sparsity_at(80, 100, 0.9, warmup=0.1, cooldown=0.2)
    0.9
"""

from __future__ import annotations


def phase_bounds(total_steps: int, warmup: float, cooldown: float) -> tuple[int, int]:
    """Return the first step of the ramp and the first step of the cool-down."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not (0.0 <= warmup and 0.0 <= cooldown and warmup + cooldown < 1.0):
        raise ValueError(f"warmup ({warmup}) and cooldown ({cooldown}) must be >= 0 and sum to less than 1")
    ramp_start = round(warmup * total_steps)
    # at least the last step is at the final sparsity, so a run always ends on its target
    ramp_end = max(ramp_start, total_steps - max(1, round(cooldown * total_steps)))
    return ramp_start, ramp_end


def ramp_progress(step: int, total_steps: int, warmup: float = 0.1, cooldown: float = 0.1) -> float:
    """Fraction ``t`` in [0, 1] of the ramp completed at ``step`` (0 during warm-up, 1 in cool-down)."""
    ramp_start, ramp_end = phase_bounds(total_steps, warmup, cooldown)
    if step < ramp_start:
        return 0.0
    if step >= ramp_end or ramp_end == ramp_start:
        return 1.0
    return (step - ramp_start) / (ramp_end - ramp_start)


def sparsity_at(
    step: int,
    total_steps: int,
    final: float,
    warmup: float = 0.1,
    cooldown: float = 0.1,
    initial: float = 0.0,
) -> float:
    """Sparsity (fraction of blocks removed) to apply at ``step`` of ``total_steps``.

    Args:
        step: current optimizer step, 0-based.
        total_steps: number of optimizer steps of the whole run.
        final: target sparsity in [0, 1).
        warmup: fraction of the steps kept at ``initial`` before the ramp.
        cooldown: fraction of the steps kept at ``final`` after the ramp.
        initial: sparsity during warm-up (normally 0).

    Returns:
        The scheduled sparsity; non-decreasing in ``step`` when ``final >= initial``.
    """
    if not (0.0 <= initial < 1.0 and 0.0 <= final < 1.0):
        raise ValueError(f"sparsities must be in [0, 1); got initial={initial}, final={final}")
    t = ramp_progress(step, total_steps, warmup, cooldown)
    if t >= 1.0:
        return final
    return final + (initial - final) * (1.0 - t) ** 3
