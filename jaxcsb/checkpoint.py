"""Saving and loading models with sparse layers: exact round trips in one ``.npz`` file.

Format (version 2): a numpy ``.npz`` archive (``numpy.load(path)`` reads it without jaxcsb)
holding

* one array per variable, named by its path in the model joined with "/" (e.g.
  ``"layers/0/values"``, ``"layers/0/local"``, ``"layers/2/bias"``); dtypes numpy cannot name
  (bfloat16, the float8 types) are stored bit for bit as unsigned integers of the same width;
* ``"__jaxcsb__"``: UTF-8 JSON (as a uint8 array) with ``format``, ``version``, ``kind``
  (``"nnx"`` or ``"pytree"``), for every array its ``dtype``, ``shape`` and variable type, and
  for every :class:`jaxcsb.nnx.SparseLinear` its ``in_features``, ``out_features`` and
  ``block_size``.

Loading checks the file against the model before changing anything and raises
:class:`CheckpointMismatchError` naming the first difference (a missing or extra variable, a
shape, a dtype, a variable type, a layer that is sparse on one side only). The pattern of a
sparse layer is part of what is saved: a SparseLinear takes its number of nonzeros, index arrays
and block size from the file (optimizer state built before loading then has stale shapes).
PRNG state (``nnx.RngState``) is not saved. Linen variables (and any pytree of arrays) are saved
with ``kind="pytree"`` and loaded against a template with the same structure, shapes and dtypes.

Why not orbax: restoring with orbax needs a target with the saved shapes, but a sparse layer's
shapes (its number of nonzeros) are what the checkpoint has to tell; one self-describing file
also needs no extra dependency. (orbax works on the state of a model whose patterns are already
in place, e.g. ``nnx.state(model)``.)
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ._format import CSB_ARRAYS

FORMAT = "jaxcsb-checkpoint"
VERSION = 2
META_KEY = "__jaxcsb__"
# Version 1 also held two arrays of precomputed work units per sparse layer, which no kernel
# read and the format has dropped; such files load with those arrays left out.
_V1_UNITS = ("row_units", "col_units")

__all__ = ["CheckpointMismatchError", "save", "load"]


class CheckpointMismatchError(ValueError):
    """The file does not fit the model or template it is loaded into."""


# --- arrays <-> npz entries ------------------------------------------------------------------


def _encode(a) -> tuple[np.ndarray, str]:
    if jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key):
        raise ValueError("PRNG key arrays cannot be saved: save jax.random.key_data(key) instead")
    a = np.asarray(a)
    if np.dtype(a.dtype.str) != a.dtype:  # an ml_dtypes type: bfloat16, float8_*
        return a.view(f"u{a.dtype.itemsize}"), a.dtype.name
    return a, a.dtype.name


def _decode(a: np.ndarray, dtype: str) -> np.ndarray:
    dtype = jnp.dtype(dtype)
    return a.view(dtype) if a.dtype != dtype else a


def _write(path, arrays: dict, meta: dict) -> None:
    entries = {}
    for name, a in arrays.items():
        if name == META_KEY:
            raise ValueError(f"a variable may not be named {META_KEY!r}")
        entries[name], meta["arrays"][name]["dtype"] = _encode(a)
    entries[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path) -> tuple[dict, dict]:
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as f:
        if META_KEY not in f.files:
            raise CheckpointMismatchError(
                f"{path} is not a jaxcsb checkpoint: it has no {META_KEY!r} entry"
            )
        meta = json.loads(bytes(f[META_KEY]).decode())
        if meta.get("format") != FORMAT or meta.get("version") not in (1, VERSION):
            raise CheckpointMismatchError(
                f"{path} has format {meta.get('format')!r} version {meta.get('version')!r}; "
                f"this jaxcsb reads {FORMAT!r} versions 1 and {VERSION}"
            )
        if meta["version"] == 1:
            meta["arrays"] = {
                n: info for n, info in meta["arrays"].items() if not _is_v1_units(n, meta)
            }
        arrays = {n: _decode(f[n], info["dtype"]) for n, info in meta["arrays"].items()}
    return meta, arrays


def _is_v1_units(name, meta) -> bool:
    """Whether ``name`` is a work-unit array of a sparse layer in a version-1 file: of a
    SparseLinear (nnx), or in the ``csb_structure`` collection of a SparseDense (pytree)."""
    layer, _, leaf = name.rpartition("/")
    if leaf not in _V1_UNITS:
        return False
    if meta.get("kind") == "nnx":
        return layer in meta.get("sparse_layers", {})
    return "csb_structure" in layer.split("/")


# --- Flax NNX ---------------------------------------------------------------------------------


def _nnx_entries(model):
    """(variables by name, SparseLinear layers by name) of an NNX model."""
    from flax import nnx

    from .nnx import SparseLinear
    from .pruning._model import path_name

    variables, sparse = {}, {}
    for path, node in nnx.iter_graph(model):
        name = path_name(path)
        if isinstance(node, SparseLinear):
            sparse[name] = node
        elif isinstance(node, nnx.Variable) and not isinstance(node, nnx.RngState):
            variables[name] = node
    return variables, sparse


def _is_nnx(target) -> bool:
    try:
        from flax import nnx
    except ImportError:
        return False
    return isinstance(target, nnx.Module)


def _sparse_meta(layer) -> dict:
    return {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "block_size": layer.block_size,
    }


def save(path, target) -> None:
    """Saves an NNX model (its variables, sparse patterns included) or a pytree of arrays
    (e.g. Linen ``variables``) to ``path`` (an ``.npz`` file, written atomically).

    >>> import os, tempfile
    >>> import jax.numpy as jnp, numpy as np
    >>> from flax import nnx
    >>> from jaxcsb import checkpoint
    >>> from jaxcsb.nnx import SparseLinear
    >>> model = SparseLinear(32, 16, sparsity=0.8, rngs=nnx.Rngs(0))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> checkpoint.save(path, model)
    >>> other = SparseLinear(32, 16, sparsity=0.5, rngs=nnx.Rngs(1))
    >>> other = checkpoint.load(path, other)
    >>> other.nnz, bool(jnp.all(other(jnp.ones((2, 32))) == model(jnp.ones((2, 32)))))
    (102, True)
    """
    meta = {"format": FORMAT, "version": VERSION, "arrays": {}}
    if _is_nnx(target):
        variables, sparse = _nnx_entries(target)
        meta["kind"] = "nnx"
        meta["sparse_layers"] = {n: _sparse_meta(layer) for n, layer in sparse.items()}
        arrays = {n: v[...] for n, v in variables.items()}
        for name, v in variables.items():
            meta["arrays"][name] = {"variable": type(v).__name__}
    else:
        meta["kind"] = "pytree"
        arrays = dict(_flatten(target))
        for name in arrays:
            meta["arrays"][name] = {"variable": None}
    for name, a in arrays.items():
        meta["arrays"][name]["shape"] = list(np.shape(a))
    _write(path, arrays, meta)


def load(path, target):
    """Loads ``path`` into ``target``.

    ``target`` an NNX model: its variables are set in place (sparse layers take their pattern
    from the file) and the model is returned. ``target`` a pytree of arrays (e.g. Linen
    ``variables`` from ``init``): a pytree of the same structure holding the file's arrays is
    returned. Raises :class:`CheckpointMismatchError` naming the first difference.
    """
    meta, arrays = _read(path)
    where = os.fspath(path)
    if _is_nnx(target):
        _expect_kind(meta, "nnx", where)
        return _load_nnx(meta, arrays, target, where)
    _expect_kind(meta, "pytree", where)
    return _load_pytree(meta, arrays, target, where)


def _expect_kind(meta, kind, where):
    if meta.get("kind") != kind:
        what = {"nnx": "an NNX model", "pytree": "a pytree of arrays"}
        raise CheckpointMismatchError(
            f"{where} holds {what.get(meta.get('kind'), repr(meta.get('kind')))} but is loaded "
            f"into {what[kind]}"
        )


def _compare_names(file_names, model_names, where, what="model"):
    missing = sorted(set(model_names) - set(file_names))
    extra = sorted(set(file_names) - set(model_names))
    if missing:
        raise CheckpointMismatchError(
            f"{where} does not match the {what}: variable {missing[0]!r} of the {what} is not in "
            f"the file ({len(missing)} missing: {missing[:5]})"
        )
    if extra:
        raise CheckpointMismatchError(
            f"{where} does not match the {what}: the file has variable {extra[0]!r} that the "
            f"{what} lacks ({len(extra)} extra: {extra[:5]})"
        )


def _compare_array(name, info, shape, dtype, where, what="model", check_shape=True):
    if info["dtype"] != jnp.dtype(dtype).name:
        raise CheckpointMismatchError(
            f"{where} does not match the {what}: variable {name!r} has dtype {info['dtype']} in "
            f"the file and {jnp.dtype(dtype).name} in the {what}"
        )
    if check_shape and tuple(info["shape"]) != tuple(shape):
        raise CheckpointMismatchError(
            f"{where} does not match the {what}: variable {name!r} has shape "
            f"{tuple(info['shape'])} in the file and {tuple(shape)} in the {what}"
        )


def _load_nnx(meta, arrays, model, where):
    from ._build import check_block_size
    from ._format import CSB

    variables, sparse = _nnx_entries(model)
    file_sparse = meta.get("sparse_layers", {})
    for name in sorted(set(sparse) | set(file_sparse)):
        label = repr(name) if name else "the root module"
        if name not in file_sparse:
            raise CheckpointMismatchError(
                f"{where} does not match the model: layer {label} is a SparseLinear in the model "
                f"but not in the file"
            )
        if name not in sparse:
            raise CheckpointMismatchError(
                f"{where} does not match the model: layer {label} is a SparseLinear in the file "
                f"but a {type(_node_at(model, name)).__name__} in the model"
            )
        saved, layer = file_sparse[name], sparse[name]
        for key in ("in_features", "out_features"):
            if saved[key] != getattr(layer, key):
                raise CheckpointMismatchError(
                    f"{where} does not match the model: SparseLinear {label} has {key}="
                    f"{saved[key]} in the file and {getattr(layer, key)} in the model"
                )
    _compare_names(meta["arrays"], variables, where)
    sparse_owned = {_join(layer, a): layer for layer in sparse for a in CSB_ARRAYS}
    for name, var in sorted(variables.items()):
        info = meta["arrays"][name]
        if info["variable"] != type(var).__name__:
            raise CheckpointMismatchError(
                f"{where} does not match the model: variable {name!r} is a {info['variable']} in "
                f"the file and a {type(var).__name__} in the model"
            )
        value = var[...]
        _compare_array(
            name, info, np.shape(value), value.dtype, where, check_shape=name not in sparse_owned
        )
    kernels = {}
    for name, layer in sparse.items():
        saved = file_sparse[name]
        parts = {a: arrays[_join(name, a)] for a in CSB_ARRAYS}
        shape = (layer.in_features, layer.out_features)
        try:
            beta = check_block_size(saved["block_size"])
        except ValueError as e:
            raise CheckpointMismatchError(f"{where}: SparseLinear {name!r}: {e}") from None
        blocks = -(-shape[0] // beta) * -(-shape[1] // beta)
        nnz = parts["values"].shape[0]
        ptr = parts["block_ptr"]
        if parts["local"].shape != (nnz,) or ptr.shape != (blocks + 1,) or int(ptr[-1]) != nnz:
            raise CheckpointMismatchError(
                f"{where} is inconsistent: SparseLinear {name!r} has {nnz} values, "
                f"{parts['local'].shape[0]} positions and a block_ptr of length {ptr.shape[0]} "
                f"ending at {int(ptr[-1]) if ptr.size else None} (expected length {blocks + 1} "
                f"ending at {nnz} for shape {shape} and block_size {beta})"
            )
        kernels[name] = CSB(
            *(jnp.asarray(parts[a]) for a in CSB_ARRAYS), stored_shape=shape, block_size=beta
        )
    # Everything matched: now change the model.
    for name, var in variables.items():
        if name not in sparse_owned:
            var.set_value(jnp.asarray(arrays[name]))
    for name, kernel in kernels.items():
        sparse[name].set_kernel(kernel)
    return model


def _join(prefix, name):
    return f"{prefix}/{name}" if prefix else name


def _node_at(model, name):
    from flax import nnx

    from .pruning._model import path_name

    for path, node in nnx.iter_graph(model):
        if path_name(path) == name:
            return node
    return None


# --- pytrees (Linen variables) ----------------------------------------------------------------


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flatten(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
        out.append(("/".join(_key_name(k) for k in path), leaf))
    return out


def _load_pytree(meta, arrays, template, where):
    entries = _flatten(template)
    _compare_names(meta["arrays"], [n for n, _ in entries], where, what="template")
    for name, leaf in entries:
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        _compare_array(name, meta["arrays"][name], np.shape(leaf), dtype, where, "template")
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(arrays[n]) for n, _ in entries])
