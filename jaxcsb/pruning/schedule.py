"""The gradual pruning schedule of Zhu & Gupta (2018), "To prune, or not to prune".

Sparsity rises from ``initial_sparsity`` (s_i) at ``begin_step`` (t0) to ``final_sparsity``
(s_f) at ``end_step`` (t0 + n Δt), fast at first and slowly at the end:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** 3     for t0 <= t <= t0 + n Δt

and is constant outside that range (s_i before, s_f after). With ``frequency`` Δt > 1 the
value only changes at t0, t0 + Δt, ... and at t0 + n Δt (the paper updates the masks every Δt
steps).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._masks import check_sparsity


def polynomial_schedule(
    initial_sparsity: float = 0.0,
    final_sparsity: float = 0.9,
    *,
    begin_step: int = 0,
    end_step: int,
    frequency: int = 1,
    power: int = 3,
):
    """Returns ``schedule(step) -> sparsity`` (a float32 scalar; works under ``jit``).

    >>> from jaxcsb import pruning
    >>> s = pruning.polynomial_schedule(0.0, 0.9, begin_step=100, end_step=200)
    >>> [round(float(s(t)), 4) for t in (0, 100, 150, 200, 1000)]
    [0.0, 0.0, 0.7875, 0.9, 0.9]
    """
    s_i = check_sparsity(initial_sparsity, "initial_sparsity")
    s_f = check_sparsity(final_sparsity, "final_sparsity")
    for name, v in (("begin_step", begin_step), ("end_step", end_step)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if end_step <= begin_step:
        raise ValueError(
            f"end_step must be larger than begin_step, got begin_step={begin_step}, "
            f"end_step={end_step}"
        )
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"frequency must be a positive int, got {frequency!r}")
    if isinstance(power, bool) or not isinstance(power, int) or power < 1:
        raise ValueError(f"power must be a positive int, got {power!r}")
    span = end_step - begin_step

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.int32), begin_step, end_step) - begin_step
        t = jnp.where(t >= span, span, (t // frequency) * frequency)
        progress = t.astype(jnp.float32) / span
        return (s_f + (s_i - s_f) * (1.0 - progress) ** power).astype(jnp.float32)

    return schedule
