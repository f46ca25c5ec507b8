"""Pruning: masks, the gradual schedule of Zhu & Gupta (2018), a masked-dense training phase,
and the conversion of a trained model's ``nnx.Linear`` layers into
:class:`jaxcsb.nnx.SparseLinear`.

A typical run: train dense; prune gradually while training (``init_masks`` once, then
``prune_step`` after every optimizer step, following ``polynomial_schedule``); freeze the
pattern with ``sparsify`` and fine-tune the sparse model.
"""

from ._masks import global_magnitude_masks, magnitude_mask, num_pruned, random_mask
from ._model import (
    apply_masks,
    init_masks,
    layer_sparsity,
    linear_layers,
    magnitude_masks,
    prune_step,
    sparsify,
    update_masks,
)
from .schedule import polynomial_schedule

__all__ = [
    "apply_masks",
    "global_magnitude_masks",
    "init_masks",
    "layer_sparsity",
    "linear_layers",
    "magnitude_mask",
    "magnitude_masks",
    "num_pruned",
    "polynomial_schedule",
    "prune_step",
    "random_mask",
    "sparsify",
    "update_masks",
]
