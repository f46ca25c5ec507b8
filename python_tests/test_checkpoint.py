"""jaxcsb.checkpoint: exact round trips of models with sparse layers (NNX) and of Linen
variables, and errors that name the mismatch."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_dense

nnx = pytest.importorskip("flax.nnx", reason="checkpoints of NNX models need flax")

from jaxcsb import checkpoint, pruning  # noqa: E402
from jaxcsb.checkpoint import CheckpointMismatchError  # noqa: E402
from jaxcsb.nnx import SparseLinear  # noqa: E402


class Net(nnx.Module):
    def __init__(self, rngs, hidden=24, half=False):
        self.layers = nnx.List(
            [
                nnx.Linear(11, hidden, rngs=rngs),
                nnx.Linear(
                    hidden, hidden, param_dtype=jnp.bfloat16 if half else jnp.float32, rngs=rngs
                ),
            ]
        )
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)  # RNG state: not saved

    def __call__(self, x):
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return self.head(self.norm(x))


def sparse_net(seed, sparsity=0.8, **kwargs):
    model = Net(nnx.Rngs(seed), **kwargs)
    return pruning.sparsify(
        model, sparsity=sparsity, scope="global", filter=lambda n, _: n != "head"
    )


def state_arrays(model):
    return {
        "/".join(map(str, path)): np.asarray(v[...])
        for path, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Variable) and not isinstance(v, nnx.RngState)
    }


def test_nnx_round_trip_is_exact(tmp_path):
    model = sparse_net(0, half=True)
    path = tmp_path / "model.npz"
    checkpoint.save(path, model)
    other = sparse_net(1, sparsity=0.3, half=True)  # different values, patterns and nnz
    assert other.layers[0].nnz != model.layers[0].nnz
    assert checkpoint.load(path, other) is other
    want, got = state_arrays(model), state_arrays(other)
    assert sorted(want) == sorted(got)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert other.layers[1].block_size == model.layers[1].block_size
    x = jnp.asarray(random_dense((4, 11), np.float32, 3))
    np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(model(x)))


def test_file_is_plain_npz_with_documented_metadata(tmp_path):
    model = sparse_net(0, half=True)
    checkpoint.save(tmp_path / "m.npz", model)
    with np.load(tmp_path / "m.npz") as f:
        meta = json.loads(bytes(f["__jaxcsb__"]).decode())
        assert meta["format"] == "jaxcsb-checkpoint" and meta["version"] == 2
        assert meta["kind"] == "nnx"
        assert meta["sparse_layers"]["layers/0"] == {
            "in_features": 11,
            "out_features": 24,
            "block_size": model.layers[0].block_size,
        }
        assert meta["arrays"]["layers/1/values"]["dtype"] == "bfloat16"
        assert f["layers/1/values"].dtype == np.uint16  # bfloat16, bit for bit
        assert meta["arrays"]["layers/0/local"]["variable"] == "SparseStructure"
        assert not any("dropout" in name for name in f.files)


def test_root_sparse_layer_round_trip(tmp_path):
    layer = SparseLinear(40, 30, sparsity=0.9, rngs=nnx.Rngs(0))
    checkpoint.save(tmp_path / "l.npz", layer)
    other = checkpoint.load(
        tmp_path / "l.npz", SparseLinear(40, 30, sparsity=0.1, rngs=nnx.Rngs(1))
    )
    np.testing.assert_array_equal(other.mask(), layer.mask())
    np.testing.assert_array_equal(np.asarray(other.values[...]), np.asarray(layer.values[...]))


@pytest.mark.parametrize(
    "make_target, message",
    [
        (lambda: Net(nnx.Rngs(0)), "layer 'layers/0' is a SparseLinear in the file but a Linear"),
        (lambda: sparse_net(0, hidden=16), "'layers/0' has out_features=24 in the file and 16"),
        (
            lambda: sparse_net(0, half=False),
            "'layers/1/bias' has dtype bfloat16 in the file and float32",
        ),
    ],
    ids=["dense-vs-sparse", "features", "dtype"],
)
def test_mismatch_errors_name_the_difference(tmp_path, make_target, message):
    checkpoint.save(tmp_path / "m.npz", sparse_net(0, half=True))
    target = make_target()
    before = state_arrays(target)
    with pytest.raises(CheckpointMismatchError, match=message):
        checkpoint.load(tmp_path / "m.npz", target)
    after = state_arrays(target)  # nothing was changed
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_missing_and_extra_variables_and_shapes(tmp_path):
    checkpoint.save(tmp_path / "no_bias.npz", nnx.Linear(4, 3, use_bias=False, rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointMismatchError, match=r"variable 'bias' of the model is not in"):
        checkpoint.load(tmp_path / "no_bias.npz", nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    checkpoint.save(tmp_path / "a.npz", nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointMismatchError, match=r"the file has variable 'bias' that the"):
        checkpoint.load(tmp_path / "a.npz", nnx.Linear(4, 3, use_bias=False, rngs=nnx.Rngs(0)))
    shape = r"'bias' has shape \(3,\) in the file and \(5,\) in the model"
    with pytest.raises(CheckpointMismatchError, match=shape):
        checkpoint.load(tmp_path / "a.npz", nnx.Linear(4, 5, rngs=nnx.Rngs(0)))


def test_not_a_checkpoint_and_wrong_kind(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(CheckpointMismatchError, match="is not a jaxcsb checkpoint"):
        checkpoint.load(tmp_path / "plain.npz", nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    checkpoint.save(tmp_path / "tree.npz", {"w": jnp.ones(3)})
    with pytest.raises(
        CheckpointMismatchError, match="holds a pytree of arrays but is loaded into an NNX"
    ):
        checkpoint.load(tmp_path / "tree.npz", nnx.Linear(4, 3, rngs=nnx.Rngs(0)))


def test_linen_variables_round_trip(tmp_path):
    from jaxcsb.linen import SparseDense

    layer = SparseDense(7, sparsity=0.6, param_dtype=jnp.bfloat16)
    x = jnp.ones((2, 9), jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    checkpoint.save(tmp_path / "v.npz", variables)
    template = layer.init(jax.random.key(1), x)
    loaded = checkpoint.load(tmp_path / "v.npz", template)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, variables
    )
    assert loaded["params"]["values"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(layer.apply(loaded, x)), np.asarray(layer.apply(variables, x))
    )
    wrong = SparseDense(7, sparsity=0.5, param_dtype=jnp.bfloat16).init(jax.random.key(0), x)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"'csb_structure/local' has shape \(25,\) in the file and \(31,\)",
    ):
        checkpoint.load(tmp_path / "v.npz", wrong)


def _as_version_1(path, unit_layers):
    """Rewrites a checkpoint the way version 1 wrote it: with two arrays of work units for
    every sparse layer (prefix) in ``unit_layers``."""
    with np.load(path) as f:
        entries = {n: f[n] for n in f.files}
    meta = json.loads(bytes(entries.pop("__jaxcsb__")).decode())
    meta["version"] = 1
    for layer in unit_layers:
        for leaf in ("row_units", "col_units"):
            name = f"{layer}/{leaf}"
            entries[name] = np.array([0, 3, 5], np.int32)
            meta["arrays"][name] = {**meta["arrays"][f"{layer}/block_ptr"], "shape": [3]}
    entries["__jaxcsb__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **entries)


def test_version_1_files_load_without_their_work_units(tmp_path):
    model = sparse_net(0, half=True)
    path = tmp_path / "m.npz"
    checkpoint.save(path, model)
    _as_version_1(path, ["layers/0", "layers/1"])
    other = checkpoint.load(path, sparse_net(1, sparsity=0.3, half=True))
    x = jnp.asarray(random_dense((4, 11), np.float32, 5))
    np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(model(x)))

    from jaxcsb.linen import SparseDense

    layer = SparseDense(7, sparsity=0.6)
    x = jnp.ones((2, 9))
    variables = layer.init(jax.random.key(0), x)
    checkpoint.save(tmp_path / "v.npz", variables)
    _as_version_1(tmp_path / "v.npz", ["csb_structure"])
    loaded = checkpoint.load(tmp_path / "v.npz", layer.init(jax.random.key(1), x))
    np.testing.assert_array_equal(
        np.asarray(layer.apply(loaded, x)), np.asarray(layer.apply(variables, x))
    )


def test_unknown_version_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    checkpoint.save(path, sparse_net(0))
    with np.load(path) as f:
        entries = {n: f[n] for n in f.files}
    meta = json.loads(bytes(entries.pop("__jaxcsb__")).decode())
    meta["version"] = 3
    entries["__jaxcsb__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **entries)
    with pytest.raises(CheckpointMismatchError, match=r"version 3; this jaxcsb reads .* 1 and 2"):
        checkpoint.load(path, sparse_net(0))
