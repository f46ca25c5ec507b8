"""jaxcsb.sharding on several devices: data and model parallel products and training steps
against one device, the collectives in their compiled HLO, and the native handlers called from
one thread per device at once.

Runs on four devices when there are four or more (the CPU, with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set before JAX starts:
``test_sharding.py::test_multidevice_cases_in_a_subprocess`` runs this file that way), else on
two (two GPUs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import f64, native_here, random_csb, seed_of
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcsb import sharding as jcs

if jax.device_count() < 2:
    pytest.skip(
        "needs 2 or more devices (XLA_FLAGS=--xla_force_host_platform_device_count=4 on the CPU); "
        "test_sharding.py::test_multidevice_cases_in_a_subprocess runs this file that way",
        allow_module_level=True,
    )

# Devices every mesh spans.
D = 4 if jax.device_count() >= 4 else 2

AXIS_TYPES = {
    "auto": jax.sharding.AxisType.Auto,
    "explicit": jax.sharding.AxisType.Explicit,
}


def _mesh(shape, names, kind="auto"):
    return jax.make_mesh(shape, names, axis_types=(AXIS_TYPES[kind],) * len(shape))


def _put(x, mesh, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))


def _close(got, want, what, rtol=2e-5):
    """float32 results of a different summation order: relative to the largest entry."""
    got, want = f64(got), f64(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    atol = rtol * max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _kinds(compiled_text):
    return {k: len(v) for k, v in jcs.collectives(compiled_text).items()}


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


# --- data parallel ---------------------------------------------------------------------------


def _dp_problem(seed):
    A, _ = random_csb((72, 40), 0.3, np.float32, seed, block_size=16, dense_rows=2)
    rng = np.random.default_rng(seed + 7)
    x = rng.standard_normal((16, 72)).astype(np.float32)
    t = rng.standard_normal((16, 40)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    return A, x, t, bias


def _dp_loss(values, bias, A, x, t):
    """Mean over the batch it sees (the whole batch, or one device's slice)."""
    y = jnp.tanh(x @ A.with_values(values) + bias)
    return jnp.mean(jnp.sum((y - t) ** 2, axis=-1))


@pytest.mark.parametrize("kind", ["explicit"])
def test_data_parallel_step_in_shard_map_matches_one_device(kind):
    """The whole step in one shard_map: each device differentiates its slice and the weights'
    gradients are averaged once (a double sum would be D times off, a missing one 1/D)."""
    A, x, t, bias = _dp_problem(seed_of("dp-shard-map"))
    mesh = _mesh((D,), ("data",), kind)
    step = jax.jit(
        jcs.data_parallel_value_and_grad(
            _dp_loss, mesh=mesh, batch_axis="data", argnums=(0, 1, 3), batch_argnums=(3, 4)
        )
    )
    loss, (g_values, g_bias, g_x) = step(
        A.values, bias, A, _put(x, mesh, P("data")), _put(t, mesh, P("data"))
    )
    want_loss, (w_values, w_bias, w_x) = jax.value_and_grad(_dp_loss, argnums=(0, 1, 3))(
        A.values, bias, A, x, t
    )
    _close(loss, want_loss, "loss")
    _close(g_values, w_values, "values gradient")
    _close(g_bias, w_bias, "bias gradient")
    _close(g_x, w_x, "input gradient")
    assert g_x.sharding.spec[0] == "data", "the input gradient should stay split"


@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_data_parallel_under_jit_matches_one_device(kind):
    """jax.jit with a sharded batch and replicated weights; matmul keeps the product per
    device, and the gradient of the replicated values is summed by autodiff."""
    A, x, t, bias = _dp_problem(seed_of("dp-jit"))
    mesh = _mesh((D,), ("data",), kind)

    def loss(values, bias, A, x, t):
        y = jnp.tanh(jcs.matmul(x, A.with_values(values), mesh=mesh, batch_axis="data") + bias)
        return jnp.mean(jnp.sum((y - t) ** 2, axis=-1))

    Ar = _put(A, mesh, P())
    args = (
        Ar.values,
        _put(bias, mesh, P()),
        Ar,
        _put(x, mesh, P("data")),
        _put(t, mesh, P("data")),
    )
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 3)))
    got_loss, got = step(*args)
    want_loss, want = jax.value_and_grad(_dp_loss, argnums=(0, 1, 3))(A.values, bias, A, x, t)
    _close(got_loss, want_loss, "loss")
    for g, w, what in zip(got, want, ("values", "bias", "input"), strict=True):
        _close(g, w, f"{what} gradient")
    assert got[2].sharding.spec[0] == "data", "the input gradient should stay split"


def test_data_parallel_steps_communicate_only_the_gradient_sum():
    """No all-gather in either data-parallel step: the batch stays split, every device
    multiplies its own slice. Plain jit of x @ A all-gathers the batch (XLA cannot split a
    custom call), which shows the check can fail."""
    A, x, t, bias = _dp_problem(seed_of("dp-hlo"))
    mesh = _mesh((D,), ("data",))
    Ar = _put(A, mesh, P())
    xs, ts = _put(x, mesh, P("data")), _put(t, mesh, P("data"))

    def via_matmul(values, bias, A, x, t):
        y = jnp.tanh(jcs.matmul(x, A.with_values(values), mesh=mesh, batch_axis="data") + bias)
        return jnp.mean(jnp.sum((y - t) ** 2, axis=-1))

    steps = {
        "jit + matmul": jax.value_and_grad(via_matmul, argnums=(0, 1)),
        "shard_map step": jcs.data_parallel_value_and_grad(
            _dp_loss, mesh=mesh, batch_axis="data", argnums=(0, 1), batch_argnums=(3, 4)
        ),
    }
    for name, step in steps.items():
        kinds = _kinds(_hlo(step, Ar.values, bias, Ar, xs, ts))
        assert set(kinds) == {"all-reduce"}, f"{name}: collectives {kinds}"
    plain = _kinds(_hlo(jax.value_and_grad(_dp_loss), Ar.values, bias, Ar, xs, ts))
    assert "all-gather" in plain, f"plain jit was expected to all-gather the batch: {plain}"


# --- model parallel --------------------------------------------------------------------------

# (shape, block_size): split over D devices, the first unevenly (padded shard layout on both
# axes; over 4 devices 72 rows -> 16, 16, 16, 24 and 40 columns -> 0, 16, 16, 8), the second
# evenly.
MATRICES = {"uneven": ((72, 40), 16), "even": ((64, 128), 16)}


def _model_problem(name, split, side):
    shape, beta = MATRICES[name]
    seed = seed_of("mp", name, split, side)
    A, dense = random_csb(shape, 0.3, np.float32, seed, block_size=beta, dense_rows=2)
    S = (jcs.shard_rows if split == "rows" else jcs.shard_cols)(A, D, warn_above=None)
    rng = np.random.default_rng(seed + 1)
    if side == "A@b":
        d = rng.standard_normal((shape[1], 6)).astype(np.float32)
    else:
        d = rng.standard_normal((2, 5, shape[0])).astype(np.float32)
    return A, dense, S, d


@pytest.mark.parametrize(
    "split,side,name",
    [
        ("rows", "A@b", "uneven"),
        ("rows", "x@A", "uneven"),
        ("cols", "A@b", "uneven"),
        ("cols", "x@A", "uneven"),
        ("rows", "x@A", "even"),
        ("cols", "x@A", "even"),
    ],
)
def test_model_parallel_products_and_gradients_match_one_device(split, side, name):
    A, dense, S, d = _model_problem(name, split, side)
    mesh = _mesh((D,), ("model",))
    left = side == "A@b"
    axis = 0 if left else -1  # the feature axis of the dense operand and of the output
    contracted = (split == "cols") if left else (split == "rows")
    want = dense @ f64(d) if left else f64(d) @ dense
    rng = np.random.default_rng(seed_of("ct", split, side, name))
    cotangent = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)

    def sharded_loss(values, d):
        # The dense operand and the output in the plain layout, converted at the edges.
        s = S.with_values(values)
        if contracted:
            d = jcs.to_shard_layout(d, S, axis=axis)
        out = (
            jcs.matmul(s, d, mesh=mesh, model_axis="model")
            if left
            else jcs.matmul(d, s, mesh=mesh, model_axis="model")
        )
        if not contracted:
            out = jcs.from_shard_layout(out, S, axis=axis)
        return jnp.sum(out * cotangent), out

    def single_loss(values, d):
        a = A.with_values(values)
        return jnp.sum((a @ d if left else d @ a) * cotangent)

    Sd = _put(S, mesh, P("model"))
    grad = jax.jit(jax.grad(sharded_loss, argnums=(0, 1), has_aux=True))
    (g_values, g_dense), y = grad(Sd.values, _put(d, mesh, P()))
    _close(y, want, "product", rtol=1e-5)
    w_values, w_dense = jax.grad(single_loss, argnums=(0, 1))(A.values, d)
    # Values: back to the unsplit order; padding must have received exactly nothing.
    g_values = np.asarray(g_values)
    for i, (start, stop) in enumerate(np.asarray(S.pad)):
        assert np.all(g_values[i, start:stop] == 0.0), f"shard {i}: padding got a gradient"
    _close(jcs.unshard(S.with_values(g_values)).values, w_values, "values gradient")
    _close(g_dense, w_dense, "dense gradient")


def test_model_parallel_forward_communicates_only_where_the_split_requires():
    """Output features split (A @ b by rows, x @ A by columns): no collective at all. The
    contraction split (A @ b by columns, x @ A by rows): one all-reduce of the output, nothing
    gathered."""
    shape, beta = MATRICES["uneven"]
    A, _ = random_csb(shape, 0.3, np.float32, seed_of("mp-hlo"), block_size=beta)
    mesh = _mesh((D,), ("model",))
    rows = _put(jcs.shard_rows(A, D, warn_above=None), mesh, P("model"))
    cols = _put(jcs.shard_cols(A, D, warn_above=None), mesh, P("model"))
    b_full = _put(np.ones((shape[1], 8), np.float32), mesh, P())
    x_full = _put(np.ones((8, shape[0]), np.float32), mesh, P())
    b_split = _put(np.ones((cols.padded_shape[1], 8), np.float32), mesh, P("model"))
    x_split = _put(np.ones((8, rows.padded_shape[0]), np.float32), mesh, P(None, "model"))

    def mm(a, b):
        return jcs.matmul(a, b, mesh=mesh, model_axis="model")

    assert _kinds(_hlo(mm, rows, b_full)) == {}, "A @ b, rows split"
    assert _kinds(_hlo(mm, x_full, cols)) == {}, "x @ A, columns split"
    assert _kinds(_hlo(mm, cols, b_split)) == {"all-reduce": 1}, "A @ b, columns split"
    assert _kinds(_hlo(mm, x_split, rows)) == {"all-reduce": 1}, "x @ A, rows split"

    # A training step of the column-split layer: the values and the activations stay split;
    # the input gradient is the one sum (sum over shards of g_i @ A_i^T).
    def loss(values, x):
        return jnp.sum(jnp.tanh(mm(x, cols.with_values(values))) ** 2)

    kinds = _kinds(_hlo(jax.grad(loss, argnums=(0, 1)), cols.values, x_full))
    assert "all-gather" not in kinds and set(kinds) <= {"all-reduce"}, kinds


def test_two_layers_pass_activations_in_the_shard_layout():
    """Megatron-style pair: W1 split by output features (columns), W2 by input features
    (rows) with the same cut points. The hidden activations stay split and padded between
    the layers; the forward pass has exactly one collective, the final all-reduce."""
    seed = seed_of("mlp")
    W1, d1 = random_csb((24, 72), 0.3, np.float32, seed, block_size=16)
    W2, d2 = random_csb((72, 20), 0.3, np.float32, seed + 1, block_size=16)
    mesh = _mesh((D,), ("model",))
    S1 = jcs.shard_cols(W1, D, warn_above=None)
    S2 = jcs.shard_rows(W2, D, bounds=S1.bounds, warn_above=None)
    assert S1.is_padded and S2.shard_size == S1.shard_size
    S1, S2 = _put(S1, mesh, P("model")), _put(S2, mesh, P("model"))
    x = np.random.default_rng(seed + 2).standard_normal((6, 24)).astype(np.float32)
    xr = _put(x, mesh, P())

    def mlp(S1, S2, x):
        h = jax.nn.relu(jcs.matmul(x, S1, mesh=mesh, model_axis="model"))
        return jcs.matmul(h, S2, mesh=mesh, model_axis="model")

    _close(jax.jit(mlp)(S1, S2, xr), np.maximum(f64(x) @ d1, 0.0) @ d2, "two layers")
    assert _kinds(_hlo(mlp, S1, S2, xr)) == {"all-reduce": 1}


@pytest.mark.skipif(D < 4, reason="a 2 x 2 mesh needs 4 devices")
def test_data_and_model_parallel_on_a_2x2_mesh():
    """Batch split over "data", output features over "model": the values' gradient is summed
    over "data" only (each "model" device owns its shard's values)."""
    A, dense = random_csb((40, 64), 0.3, np.float32, seed_of("2d"), block_size=16)
    mesh = _mesh((2, 2), ("data", "model"))
    S = jcs.shard_cols(A, 2, warn_above=None)
    Sd = _put(S, mesh, P("model"))
    x = np.random.default_rng(seed_of("2d-x")).standard_normal((8, 40)).astype(np.float32)
    xs = _put(x, mesh, P("data"))

    def loss(values, x):
        y = jcs.matmul(x, S.with_values(values), mesh=mesh, model_axis="model", batch_axis="data")
        return jnp.sum(jnp.sin(y))

    def single(values, x):
        return jnp.sum(jnp.sin(x @ A.with_values(values)))

    (g_values, g_x) = jax.jit(jax.grad(loss, argnums=(0, 1)))(Sd.values, xs)
    w_values, w_x = jax.grad(single, argnums=(0, 1))(A.values, x)
    _close(jcs.unshard(S.with_values(jnp.asarray(np.asarray(g_values)))).values, w_values, "values")
    _close(g_x, w_x, "input gradient")
    y = jax.jit(
        lambda v, x: jcs.matmul(
            x, S.with_values(v), mesh=mesh, model_axis="model", batch_axis="data"
        )
    )(Sd.values, xs)
    assert tuple(y.sharding.spec) == ("data", "model")
    _close(y, f64(x) @ dense, "product", rtol=1e-5)


# --- thread safety -----------------------------------------------------------------------------


@pytest.mark.skipif(not native_here(), reason="the native CPU target is not built")
def test_native_handlers_run_concurrently_on_every_device():
    """XLA runs one thread per device, so one native SpMM/SDDMM call per device runs at once.
    Repeated sharded steps must give bitwise the same results as each other and as the same
    per-device problems run one at a time on one device."""
    A, _ = random_csb((384, 320), 0.1, np.float32, seed_of("threads"), block_size=32)
    mesh = _mesh((D,), ("data",))
    x = np.random.default_rng(seed_of("threads-x")).standard_normal((256, 384))
    x = x.astype(np.float32)
    Ar, xs = _put(A, mesh, P()), _put(x, mesh, P("data"))

    def forward(values, A, x):
        return jcs.matmul(x, A.with_values(values), mesh=mesh, batch_axis="data", impl="native")

    def loss(values, A, x):
        return jnp.sum(jnp.tanh(forward(values, A, x)) ** 2)

    step = jax.jit(lambda v, A, x: (forward(v, A, x), jax.grad(loss, argnums=(0, 2))(v, A, x)))
    first = jax.tree_util.tree_map(np.asarray, step(Ar.values, Ar, xs))
    for _ in range(20):
        again = step(Ar.values, Ar, xs)
        for a, b in zip(
            jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again), strict=True
        ):
            assert np.array_equal(a, np.asarray(b)), "a repeated sharded step differs"

    # Each device's forward slice equals the same slice computed alone on one device, bit for
    # bit; the summed gradients equal one device's up to summation order.
    y, (g_values, g_x) = first
    one = jax.jit(lambda v, A, x: x @ A.with_values(v))
    per_device = x.shape[0] // D
    for i in range(D):
        rows = slice(per_device * i, per_device * (i + 1))
        assert np.array_equal(y[rows], np.asarray(one(A.values, A, x[rows]))), f"device {i}"
    single = jax.jit(
        jax.grad(lambda v, A, x: jnp.sum(jnp.tanh(x @ A.with_values(v)) ** 2), argnums=(0, 2))
    )
    w_values, w_x = single(A.values, A, x)
    _close(g_values, w_values, "values gradient", rtol=1e-4)
    _close(g_x, w_x, "input gradient", rtol=1e-4)


# --- Flax NNX layers ---------------------------------------------------------------------------


class _Mlp:
    """Two layers with a ReLU between them, as an nnx.Module built on demand (flax is
    imported only by the tests that use it)."""

    @staticmethod
    def build(first, second):
        from flax import nnx

        class Mlp(nnx.Module):
            def __init__(self, first, second):
                self.first, self.second = first, second

            def __call__(self, x):
                return self.second(jax.nn.relu(self.first(x)))

        return Mlp(first, second)


def _mse(model, x, t):
    return jnp.mean(jnp.sum((model(x) - t) ** 2, axis=-1))


def _layers(seed):
    """Two SparseLinear layers (24 -> 72 -> 20) built on the host; biases that are not zero,
    so that a misplaced bias shows."""
    from jaxcsb.nnx import SparseLinear

    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in ((24, 72), (72, 20)):
        kernel = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        mask = rng.random((n_in, n_out)) < 0.3
        bias = rng.standard_normal(n_out).astype(np.float32)
        layers.append(SparseLinear.from_dense(kernel, bias, mask=mask, block_size=16))
    return layers


def test_sharded_sparse_linear_pair_trains_like_the_unsplit_layers():
    """Layer 1 split by output features, layer 2 by input features with its bounds (uneven:
    72 features in 5 blocks over D devices). Three Adam steps under nnx.jit give the unsplit
    model's losses and weights; the forward pass has one collective, the final all-reduce."""
    nnx = pytest.importorskip("flax.nnx")
    optax = pytest.importorskip("optax")
    from jaxcsb.sharding.nnx import ShardedSparseLinear

    mesh = _mesh((D,), ("model",))
    first, second = _layers(seed_of("nnx-pair"))
    split1 = ShardedSparseLinear(first, mesh=mesh, model_axis="model", split="out", warn_above=None)
    split2 = ShardedSparseLinear(
        second, mesh=mesh, model_axis="model", split="in", bounds=split1.bounds, warn_above=None
    )
    assert split1.sharded.is_padded and split1.bounds == split2.bounds
    sharded, plain = _Mlp.build(split1, split2), _Mlp.build(first, second)
    rng = np.random.default_rng(seed_of("nnx-pair-x"))
    x = jnp.asarray(rng.standard_normal((6, 24)), jnp.float32)
    t = jnp.asarray(rng.standard_normal((6, 20)), jnp.float32)
    _close(nnx.jit(lambda m, x: m(x))(sharded, x), nnx.jit(plain)(x), "forward", rtol=1e-5)
    forward_hlo = nnx.jit(lambda m, x: m(x)).lower(sharded, x).compile().as_text()
    assert _kinds(forward_hlo) == {"all-reduce": 1}

    losses = {}
    for name, model in (("sharded", sharded), ("plain", plain)):
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer, x, t):
            loss, grads = nnx.value_and_grad(_mse)(model, x, t)
            optimizer.update(model, grads)
            return loss

        losses[name] = [float(step(model, optimizer, x, t)) for _ in range(3)]
    np.testing.assert_allclose(losses["sharded"], losses["plain"], rtol=1e-5)
    for split, layer in ((split1, first), (split2, second)):
        back = split.to_sparse_linear()
        np.testing.assert_array_equal(back.mask(), layer.mask())
        _close(back.values[...], layer.values[...], "trained values")
        _close(back.bias[...], layer.bias[...], "trained bias")


def test_nnx_data_parallel_value_and_grad_matches_one_device():
    nnx = pytest.importorskip("flax.nnx")
    from jaxcsb.sharding.nnx import data_parallel_value_and_grad

    mesh = _mesh((D,), ("data",))
    model = _Mlp.build(*_layers(seed_of("nnx-dp")))
    rng = np.random.default_rng(seed_of("nnx-dp-x"))
    x = jnp.asarray(rng.standard_normal((8, 24)), jnp.float32)
    t = jnp.asarray(rng.standard_normal((8, 20)), jnp.float32)
    step = nnx.jit(data_parallel_value_and_grad(_mse, mesh=mesh, batch_axis="data"))
    loss, grads = step(model, _put(x, mesh, P("data")), _put(t, mesh, P("data")))
    want_loss, want = nnx.jit(nnx.value_and_grad(_mse))(model, x, t)
    _close(loss, want_loss, "loss")
    got_leaves, want_leaves = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves) == 4  # two values, two biases
    for g, w in zip(got_leaves, want_leaves, strict=True):
        _close(g, w, "gradient")


# --- csb_matmul in a user's own shard_map ------------------------------------------------------


def test_csb_matmul_inside_a_vma_checked_shard_map():
    """With the check on, the gradient of the replicated values taken inside shard_map is
    summed over the devices by JAX itself (the transpose of the implicit broadcast)."""
    A, x, t, bias = _dp_problem(seed_of("vma"))
    mesh = _mesh((D,), ("data",))

    def local_grad(values, A, x):
        return jax.grad(lambda v: jnp.sum(jnp.tanh(x @ A.with_values(v)) ** 2))(values)

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        pytest.skip("jax.shard_map is not available in this JAX")
    f = shard_map(local_grad, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P())
    got = jax.jit(f)(A.values, A, _put(x, mesh, P("data")))
    want = local_grad(A.values, A, x)
    _close(got, want, "values gradient")
