"""Pruning a whole Flax NNX model: masks over its ``nnx.Linear`` kernels, the masked-dense
training phase, and the conversion of the pruned layers into ``SparseLinear``.

Layers are named by their path in the model joined with "/" (``"layers/0"``, ``"ffn/up"``),
and masks are dicts from those names to bool arrays of the kernel's shape, so they are pytrees
that ``nnx.jit`` can take and return.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._masks import global_magnitude_masks, magnitude_mask, num_pruned

SCOPES = ("layer", "global")
LayerFilter = Callable[[str, nnx.Module], bool]


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


def _check_scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def _layers_with_paths(model, kind, filter):
    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, kind):
            name = path_name(path)
            if filter is None or filter(name, node):
                out[name] = (tuple(path), node)
    return out


def linear_layers(model, filter: LayerFilter | None = None) -> dict[str, nnx.Linear]:
    """The model's ``nnx.Linear`` layers by name; ``filter(name, layer)`` selects a subset.

    >>> from flax import nnx
    >>> from jaxcsb import pruning
    >>> rngs = nnx.Rngs(0)
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs))
    >>> list(pruning.linear_layers(model))
    ['layers/0', 'layers/1']
    """
    return {name: node for name, (_, node) in _layers_with_paths(model, nnx.Linear, filter).items()}


def init_masks(model, filter: LayerFilter | None = None) -> dict[str, jax.Array]:
    """All-True masks for the selected ``nnx.Linear`` kernels: the state before pruning."""
    return {
        n: jnp.ones(layer.kernel.shape, bool) for n, layer in linear_layers(model, filter).items()
    }


def magnitude_masks(
    model, sparsity, *, scope: str = "layer", filter: LayerFilter | None = None
) -> dict[str, jax.Array]:
    """Magnitude masks of the selected ``nnx.Linear`` kernels.

    ``scope="layer"`` prunes ``round(sparsity * size)`` weights of every kernel;
    ``scope="global"`` prunes ``round(sparsity * total)`` weights over all of them, with one
    threshold. Works under ``nnx.jit`` with a traced ``sparsity``.
    """
    _check_scope(scope)
    kernels = {n: layer.kernel[...] for n, layer in linear_layers(model, filter).items()}
    if scope == "global":
        return global_magnitude_masks(kernels, sparsity)
    return {n: magnitude_mask(k, sparsity) for n, k in kernels.items()}


def _masked_layers(model, masks: dict) -> dict[str, nnx.Linear]:
    layers = linear_layers(model)
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(
                f"masks has an entry {name!r} but the model has no nnx.Linear there; its "
                f"nnx.Linear layers are {sorted(layers)}"
            )
        if tuple(mask.shape) != tuple(layers[name].kernel.shape):
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)} but the kernel there has shape "
                f"{tuple(layers[name].kernel.shape)}"
            )
    return layers


def apply_masks(model, masks: dict) -> None:
    """Sets the kernels' pruned entries to zero, in place (call it after each optimizer step
    of the masked-dense phase so that pruned weights stay zero)."""
    layers = _masked_layers(model, masks)
    for name, mask in masks.items():
        kernel = layers[name].kernel
        k = kernel[...]
        kernel.set_value(jnp.where(mask, k, jnp.zeros((), k.dtype)))


def update_masks(model, masks: dict, sparsity, *, scope: str = "layer") -> dict[str, jax.Array]:
    """Recomputes the magnitude masks when they do not prune the target number of weights at
    ``sparsity``, and returns ``masks`` unchanged otherwise (works under ``jit``). The layers
    are those named in ``masks``.

    This is the update rule of Zhu & Gupta: the masks change only when the schedule's sparsity
    does (every Δt steps), and between updates the same masks are applied. Magnitudes are
    those of the masked kernels, so weights pruned earlier stay pruned as the sparsity rises.
    """
    _check_scope(scope)
    names = sorted(masks)
    if not names:
        return masks
    pruned = jnp.stack([jnp.sum(~masks[n]) for n in names]).astype(jnp.int32)
    if scope == "global":
        total = sum(int(np.prod(masks[n].shape)) for n in names)
        stale = jnp.sum(pruned) != num_pruned(total, sparsity)
    else:
        target = jnp.stack(
            [jnp.asarray(num_pruned(int(np.prod(masks[n].shape)), sparsity)) for n in names]
        )
        stale = jnp.any(pruned != target.astype(jnp.int32))

    layers = _masked_layers(model, masks)

    def recompute():
        # Magnitudes of the masked kernels (as Zhu & Gupta): weights pruned earlier count as
        # zero even if the last optimizer step moved them, so they stay pruned.
        kernels = {n: jnp.where(masks[n], layers[n].kernel[...], 0) for n in names}
        if scope == "global":
            return global_magnitude_masks(kernels, sparsity)
        return {n: magnitude_mask(k, sparsity) for n, k in kernels.items()}

    return jax.lax.cond(stale, recompute, lambda: dict(masks))


def prune_step(
    model,
    masks: dict,
    step,
    schedule: Callable,
    *,
    scope: str = "layer",
) -> dict[str, jax.Array]:
    """One step of the masked-dense phase: ``update_masks`` at ``schedule(step)``, then
    ``apply_masks``. Returns the masks to pass to the next step. The pruned layers are those
    named in ``masks`` (see ``init_masks``, which takes a ``filter``).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxcsb import pruning
    >>> model = nnx.Sequential(nnx.Linear(16, 16, rngs=nnx.Rngs(0)))
    >>> schedule = pruning.polynomial_schedule(0.0, 0.75, begin_step=0, end_step=10)
    >>> masks = pruning.init_masks(model)
    >>> for step in range(12):
    ...     masks = pruning.prune_step(model, masks, step, schedule)
    >>> int(jnp.sum(model.layers[0].kernel[...] == 0))
    192
    """
    masks = update_masks(model, masks, schedule(step), scope=scope)
    apply_masks(model, masks)
    return masks


def _replace(model, path, new):
    parent = model
    for key in path[:-1]:
        parent = (
            parent[key]
            if isinstance(parent, (list, dict, nnx.List, nnx.Dict))
            else getattr(parent, key)
        )
    key = path[-1]
    if isinstance(parent, (list, dict, nnx.List, nnx.Dict)):
        parent[key] = new
    else:
        setattr(parent, key, new)


def sparsify(
    model,
    *,
    sparsity: float | None = None,
    masks: dict | None = None,
    scope: str = "layer",
    filter: LayerFilter | None = None,
    block_size: int | None = None,
    impl: str = "auto",
):
    """Replaces ``nnx.Linear`` layers by :class:`jaxcsb.nnx.SparseLinear`, in place.

    The patterns are ``masks`` (by layer name, e.g. from the masked-dense phase; only the
    layers named there are converted), else the magnitude masks at ``sparsity`` (``scope``
    "layer" or "global"), else each kernel's nonzeros. ``filter(name, layer)`` selects layers.
    Returns the model (or the new layer when ``model`` itself is an ``nnx.Linear``). Optimizers
    built before the call refer to the old parameters: build a new one.

    >>> from flax import nnx
    >>> from jaxcsb import pruning
    >>> rngs = nnx.Rngs(0)
    >>> layers = [nnx.Linear(32, 64, rngs=rngs), nnx.relu, nnx.Linear(64, 10, rngs=rngs)]
    >>> model = nnx.Sequential(*layers)
    >>> model = pruning.sparsify(model, sparsity=0.9)
    >>> type(model.layers[0]).__name__, model.layers[0].nnz
    ('SparseLinear', 205)
    """
    from ..nnx import SparseLinear

    if sparsity is not None and masks is not None:
        raise ValueError("pass at most one of sparsity= and masks=, got both")
    found = _layers_with_paths(model, nnx.Linear, filter)
    if masks is not None:
        unknown = sorted(set(masks) - set(found))
        if unknown:
            raise ValueError(
                f"masks names layers the model has no nnx.Linear at: {unknown}; its "
                f"nnx.Linear layers are {sorted(found)}"
            )
        found = {n: found[n] for n in masks}
    elif sparsity is not None:
        masks = magnitude_masks(model, sparsity, scope=scope, filter=filter)
    for name, (path, layer) in found.items():
        mask = None if masks is None else np.asarray(masks[name])
        new = SparseLinear.from_linear(layer, mask=mask, block_size=block_size, impl=impl)
        if not path:
            return new
        _replace(model, path, new)
    return model


def layer_sparsity(model) -> dict[str, float]:
    """The fraction of pruned weights of every ``nnx.Linear`` (zeros in its kernel) and
    ``SparseLinear`` (entries not stored) in the model, by name."""
    from ..nnx import SparseLinear

    out = {}
    for name, (_, node) in _layers_with_paths(model, (nnx.Linear, SparseLinear), None).items():
        if isinstance(node, SparseLinear):
            out[name] = node.sparsity
        else:
            out[name] = float(jnp.mean(node.kernel[...] == 0))
    return out
