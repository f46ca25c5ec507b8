"""Masks: which weights a pruned layer keeps.

Every mask here prunes an exact number of weights, ``round(sparsity * size)`` (Python's
``round``: halves go to the even neighbour), so a requested sparsity is met exactly, not on
average. Ties in magnitude are broken by position (the earlier flat index is pruned first), so
a mask is a deterministic function of its inputs. The magnitude functions are written in
``jax.numpy`` and work eagerly and under ``jit``, with a traced ``sparsity`` too (as in a
gradual schedule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """A concrete sparsity as a float in [0, 1], or ValueError naming ``name``."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {sparsity!r}") from None
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {s}")
    return s


def num_pruned(size: int, sparsity) -> int | jax.Array:
    """How many of ``size`` weights a mask at ``sparsity`` prunes: ``round(sparsity * size)``.

    A Python or numpy number gives a Python int; a JAX array (traced, e.g. a schedule's value
    under ``jit``) an int32 scalar computed in float32. Both round half to even.
    """
    if isinstance(sparsity, (int, float, np.integer, np.floating)):
        return round(check_sparsity(sparsity) * size)
    return jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


def _keep_smallest_pruned(scores, k):
    """Flat bool mask: False at the k smallest scores (ties: earlier index first). numpy in and
    a concrete k: computed by numpy on the host (no compilation); otherwise by jax.numpy."""
    if isinstance(scores, np.ndarray) and isinstance(k, int):
        keep = np.ones(scores.shape, bool)
        keep[np.argsort(scores, kind="stable")[:k]] = False
        return keep
    order = jnp.argsort(scores, stable=True)
    rank_kept = jnp.arange(scores.shape[0]) >= k
    return jnp.zeros(scores.shape, bool).at[order].set(rank_kept)


def magnitude_mask(w, sparsity) -> jax.Array | np.ndarray:
    """Keeps the largest-magnitude entries of ``w``; prunes exactly ``round(sparsity * w.size)``.

    A numpy ``w`` with a concrete sparsity gives a numpy mask (computed on the host); anything
    else a JAX array.

    >>> import jax.numpy as jnp
    >>> from jaxcsb import pruning
    >>> pruning.magnitude_mask(jnp.array([[0.1, -3.0], [2.0, 0.5]]), 0.5)
    Array([[False,  True],
           [ True, False]], dtype=bool)
    """
    xp = np if isinstance(w, np.ndarray) else jnp
    w = xp.asarray(w)
    k = num_pruned(w.size, sparsity)
    scores = xp.abs(w.astype(np.float32)).reshape(-1)
    return _keep_smallest_pruned(scores, k).reshape(w.shape)


def global_magnitude_masks(kernels: dict, sparsity) -> dict:
    """Magnitude masks over several arrays at once: one threshold for all of them.

    ``kernels`` maps names to arrays; exactly ``round(sparsity * total size)`` entries are
    pruned in all, wherever the smallest magnitudes are (so layers end up with different
    sparsities). Returns a dict of bool masks with the same keys.

    >>> import jax.numpy as jnp
    >>> from jaxcsb import pruning
    >>> kernels = {"a": jnp.array([1.0, 5.0]), "b": jnp.array([2.0, 3.0])}
    >>> m = pruning.global_magnitude_masks(kernels, 0.5)
    >>> [m["a"].tolist(), m["b"].tolist()]
    [[False, True], [False, True]]
    """
    names = list(kernels)
    if not names:
        return {}
    arrays = [jnp.asarray(kernels[n]) for n in names]
    scores = jnp.concatenate([jnp.abs(a.astype(jnp.float32)).reshape(-1) for a in arrays])
    flat = _keep_smallest_pruned(scores, num_pruned(scores.shape[0], sparsity))
    out, start = {}, 0
    for name, a in zip(names, arrays, strict=True):
        out[name] = flat[start : start + a.size].reshape(a.shape)
        start += a.size
    return out


def random_mask(shape, sparsity, key) -> np.ndarray:
    """A uniformly random mask (numpy bool) pruning exactly ``round(sparsity * size)`` entries.

    ``key`` is a JAX PRNG key (concrete): its bits seed numpy's generator, which draws the mask
    on the host.

    >>> import jax
    >>> from jaxcsb import pruning
    >>> int(pruning.random_mask((10, 10), 0.9, jax.random.key(0)).sum())
    10
    """
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape))
    k = num_pruned(size, sparsity)
    order = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()).permutation(size)
    keep = np.ones(size, bool)
    keep[order[:k]] = False
    return keep.reshape(shape)
