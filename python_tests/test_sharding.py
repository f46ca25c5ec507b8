"""jaxcsb.sharding on one device: splitting a matrix into shards of equal static shape, the
padding that makes them equal, gluing them back, the shard layout, the imbalance report, and
the HLO collective finder. The multi-device cases live in test_sharding_multidevice.py, which
the last test here runs in a subprocess with four host devices."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, f64, random_csb, run_with_host_devices, seed_of

import jaxcsb
from jaxcsb import sharding as jcs
from jaxcsb.sharding._split import stored_coordinates

# (shape, density, block_size, num_shards): dimensions that are not multiples of the block
# size, more shards than block-lines (empty shards), a single block-line.
SPLITS = [
    ((72, 40), 0.3, 16, 4),
    ((100, 37), 0.2, 16, 3),
    ((33, 250), 0.1, 32, 4),
    ((40, 40), 0.5, 16, 4),
    ((16, 90), 0.3, 16, 2),
    ((130, 70), 0.05, 64, 2),
]
SPLIT_IDS = [f"{s[0][0]}x{s[0][1]}-b{s[2]}-{s[3]}shards" for s in SPLITS]


def _split(A, axis, num_shards, **options):
    fn = jcs.shard_rows if axis == 0 else jcs.shard_cols
    return fn(A, num_shards, warn_above=None, **options)


def _dense(a: jaxcsb.CSB) -> np.ndarray:
    """float64 dense copy of a CSB matrix, on the host (no JAX dispatch: fast)."""
    row, col, values = stored_coordinates(a)
    out = np.zeros(a.stored_shape)
    out[row, col] = f64(values)
    return out.T if a.transposed else out


def _host_shard(sharded, i) -> jaxcsb.CSB:
    """Shard i from the stored arrays, on the host (padding included, stored as zeros)."""
    leaves = [np.asarray(x)[i] for x in jax.tree_util.tree_leaves(sharded)[:3]]
    return jaxcsb.CSB(
        *leaves,
        stored_shape=sharded.stored_shape,
        block_size=sharded.block_size,
        transposed=sharded.transposed,
    )


def _shard_block(dense, sharded, i):
    """The part of the dense matrix that shard i holds."""
    lo, hi = sharded.bounds[i], sharded.bounds[i + 1]
    return dense[lo:hi] if sharded.axis == 0 else dense[:, lo:hi]


def _assert_same_csb(got, want):
    assert (got.shape, got.block_size, got.transposed) == (
        want.shape,
        want.block_size,
        want.transposed,
    )
    names = ("values", "block_ptr", "local")
    for name, g, w in zip(
        names, jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True
    ):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, f"{name}: dtype {g.dtype} != {w.dtype}"
        assert np.array_equal(g, w), f"{name} differs after unshard"


# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "cols"])
@pytest.mark.parametrize("balance", [False, True], ids=["even", "balanced"])
@pytest.mark.parametrize("shape,density,block_size,num_shards", SPLITS, ids=SPLIT_IDS)
def test_shards_hold_the_matrix_and_unshard_is_exact(
    shape, density, block_size, num_shards, axis, balance
):
    seed = seed_of("split", shape, axis, balance)
    A, dense = random_csb(shape, density, np.float32, seed, block_size=block_size, dense_rows=2)
    S = _split(A, axis, num_shards, balance=balance)
    beta = block_size
    assert S.num_shards == num_shards and S.shape == A.shape and S.axis == axis
    assert S.bounds[0] == 0 and S.bounds[-1] == shape[axis]
    on_blocks = all(b % beta == 0 or b == shape[axis] for b in S.bounds)
    assert on_blocks, f"cut off a block boundary: {S.bounds}"
    assert S.shard_size == max(S.sizes)
    assert S.nnz == A.nnz
    nnz_max = max(S.shard_nnz)
    lines, length = (-(-d // beta) for d in S.stored_shape)
    for i in range(num_shards):
        block = _shard_block(dense, S, i)
        shard = _host_shard(S, i)
        assert shard.shape == S.shard_shape
        got = _dense(shard)
        size = S.sizes[i]
        real = got[:size] if axis == 0 else got[:, :size]
        rest = got[size:] if axis == 0 else got[:, size:]
        np.testing.assert_array_equal(real, block, err_msg=f"shard {i}")
        assert not rest.any(), f"shard {i} has entries beyond its extent"
        assert S.shard_nnz[i] == np.count_nonzero(block) or density == 1.0
        # The kernels require block_ptr to end at the array length: padding is structure.
        assert int(S.block_ptr[i, -1]) == nnz_max
    _assert_same_csb(jcs.unshard(S), A)


@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "cols"])
def test_transposed_view_is_split_in_its_stored_orientation(axis):
    A, dense = random_csb((72, 40), 0.3, np.float32, seed_of("T", axis), block_size=16)
    S = _split(A.T, axis, 3)
    assert S.transposed and S.shape == (40, 72)
    # Splitting the rows of A.T cuts the stored columns of A: the shards are views too.
    assert _host_shard(S, 0).transposed
    for i in range(3):
        got = _dense(_host_shard(S, i))
        block = _shard_block(dense.T, S, i)
        np.testing.assert_array_equal(
            got[: S.sizes[i]] if axis == 0 else got[:, : S.sizes[i]], block
        )
    _assert_same_csb(jcs.unshard(S), A.T)
    # .T of the split is the split of A along the other axis, sharing every array.
    ST = S.T
    assert ST.axis == 1 - axis and not ST.transposed and ST.shape == A.shape
    assert ST.values is S.values
    _assert_same_csb(jcs.unshard(ST), A)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_values_survive_the_round_trip(dtype):
    A, _ = random_csb((64, 48), 0.3, dtype, seed_of("half", str(dtype)), block_size=16)
    S = _split(A, 0, 3)
    assert S.dtype == np.dtype(dtype)
    _assert_same_csb(jcs.unshard(S), A)


def test_padding_never_shares_a_position_with_a_nonzero():
    """Shard 1's last block is full, so its padding must go to another block: a kernel that
    expands a block into a dense tile would otherwise overwrite a real weight with zero."""
    w = np.zeros((32, 32), np.float32)
    w[:16] = 1.0  # shard 0: both blocks full, 512 nonzeros
    w[16:, 16:] = 2.0  # shard 1: last block full
    w[20, 3] = 3.0  # and one nonzero in its first block
    A = jaxcsb.CSB.fromdense(w, block_size=16)
    S = _split(A, 0, 2)
    assert S.shard_nnz == (512, 257)
    start, stop = (int(v) for v in S.pad[1])
    assert stop - start == 512 - 257
    local = np.asarray(S.local[1]).astype(np.int64)
    block_ptr = np.asarray(S.block_ptr[1])
    block = np.repeat(np.arange(block_ptr.shape[0] - 1), np.diff(block_ptr))
    position = block * 65536 + local
    padding = position[start:stop]
    assert np.unique(padding).shape[0] == 1, "padding spread over several positions"
    assert padding[0] not in np.delete(position, np.arange(start, stop)), "padding on a nonzero"
    assert block[start] == 0, "padding should have gone to the only block with room"
    np.testing.assert_array_equal(_dense(_host_shard(S, 1))[:16], w[16:])


def test_a_shard_without_nonzeros_and_a_matrix_without_nonzeros():
    w = np.zeros((48, 20), np.float32)
    w[40, 5] = 1.5  # a single nonzero, in the last shard
    S = _split(jaxcsb.CSB.fromdense(w, block_size=16), 0, 3)
    assert S.shard_nnz == (0, 0, 1)
    for i in range(3):
        np.testing.assert_array_equal(_dense(_host_shard(S, i)), w[16 * i : 16 * i + 16])
    _assert_same_csb(jcs.unshard(S), jaxcsb.CSB.fromdense(w, block_size=16))
    empty = jaxcsb.CSB.fromdense(np.zeros((40, 20), np.float32), block_size=16)
    S = _split(empty, 1, 2)
    assert S.values.shape == (2, 0) and S.stats().imbalance == 1.0
    _assert_same_csb(jcs.unshard(S), empty)


def test_explicit_bounds_are_kept_and_checked():
    A, dense = random_csb((80, 40), 0.3, np.float32, seed_of("bounds"), block_size=16)
    S = _split(A, 0, 3, bounds=[0, 16, 64, 80])
    assert S.bounds == (0, 16, 64, 80) and S.sizes == (16, 48, 16) and S.shard_size == 48
    _assert_same_csb(jcs.unshard(S), A)
    with pytest.raises(ValueError, match="num_shards \\+ 1 = 4 entries"):
        _split(A, 0, 3, bounds=[0, 16, 80])
    with pytest.raises(ValueError, match="block boundaries"):
        _split(A, 0, 3, bounds=[0, 20, 64, 80])
    with pytest.raises(ValueError, match="start at 0 and end at the split extent 80"):
        _split(A, 0, 3, bounds=[0, 16, 64, 96])
    with pytest.raises(ValueError, match="non-decreasing"):
        _split(A, 0, 3, bounds=[0, 64, 16, 80])
    with pytest.raises(ValueError, match="either bounds or balance"):
        _split(A, 0, 3, bounds=[0, 16, 64, 80], balance=True)
    with pytest.raises(ValueError, match="num_shards must be a positive int, got 0"):
        _split(A, 0, 0)
    with pytest.raises(ValueError, match="must be a jaxcsb.CSB"):
        jcs.shard_rows(dense, 2)


# --- padding and products -----------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "cols"])
def test_each_shard_multiplies_like_its_part_and_padding_gets_no_gradient(axis):
    """Per shard (one device): the product equals the float64 product of its part of the
    matrix, even after the stored padding values are overwritten (as an optimizer might), and
    the padding's gradient is exactly zero."""
    A, dense = random_csb(
        (72, 56), 0.3, np.float32, seed_of("pad", axis), block_size=16, dense_rows=3
    )
    S = _split(A, axis, 3)
    pads = np.asarray(S.pad)
    assert (pads[:, 1] > pads[:, 0]).any(), "this case should need padding"
    garbage = np.array(S.values)
    for i, (start, stop) in enumerate(pads):
        garbage[i, start:stop] = 1e3
    S_garbage = S.with_values(jnp.asarray(garbage))
    rng = np.random.default_rng(seed_of("pad-x", axis))
    x = rng.standard_normal((5, S.shard_shape[0])).astype(np.float32)

    # One compilation for all shards: the shard index is traced.
    @jax.jit
    def product_and_grad(values, i):
        def loss(v):
            y = x @ S_garbage.with_values(v).shard(i)
            return jnp.sum(jnp.sin(y)), y

        return jax.grad(loss, has_aux=True)(values)

    for i in range(S.num_shards):
        block = np.zeros(S.shard_shape)
        part = _shard_block(dense, S, i)
        block[: part.shape[0], : part.shape[1]] = part
        g, y = product_and_grad(S_garbage.values, i)
        assert_close(y, x @ block, np.abs(x) @ np.abs(block), np.float32, f"shard {i}")
        g = np.asarray(g)
        start, stop = pads[i]
        assert np.all(g[i, start:stop] == 0.0), f"shard {i}: padding got a gradient"
        assert np.any(g[i, :start] != 0.0) or start == 0


def test_local_csb_needs_one_shard():
    A, _ = random_csb((48, 32), 0.3, np.float32, seed_of("local"), block_size=16)
    S = _split(A, 0, 3)
    with pytest.raises(ValueError, match="leading shard axis of length 1"):
        S.local_csb()
    one = jax.tree_util.tree_map(lambda a: a[1:2], S)
    np.testing.assert_array_equal(_dense(one.local_csb()), _dense(_host_shard(S, 1)))


def test_with_values_checks_the_shape():
    A, _ = random_csb((48, 32), 0.3, np.float32, seed_of("wv"), block_size=16)
    S = _split(A, 1, 2)
    with pytest.raises(ValueError, match=f"values must have shape \\(2, {max(S.shard_nnz)}\\)"):
        S.with_values(jnp.zeros((A.nnz,), jnp.float32))


# --- layout --------------------------------------------------------------------------------


def test_shard_layout_round_trip_and_identity_when_even():
    A, _ = random_csb((40, 72), 0.3, np.float32, seed_of("layout"), block_size=16)
    S = _split(A, 1, 4)  # 72 columns in 5 block-columns: sizes 16, 16, 16, 24
    assert S.is_padded and S.padded_shape == (40, 4 * 24)
    x = np.arange(3 * 72, dtype=np.float32).reshape(3, 72)
    y = np.asarray(jax.jit(lambda x: jcs.to_shard_layout(x, S, axis=-1))(x))
    assert y.shape == (3, 96)
    for i, (lo, hi) in enumerate(zip(S.bounds, S.bounds[1:], strict=False)):
        np.testing.assert_array_equal(y[:, 24 * i : 24 * i + hi - lo], x[:, lo:hi])
        assert not y[:, 24 * i + hi - lo : 24 * (i + 1)].any()
    np.testing.assert_array_equal(jax.jit(lambda y: jcs.from_shard_layout(y, S, axis=1))(y), x)
    even = _split(A, 1, 2, bounds=[0, 32, 72])
    assert even.is_padded  # 32 and 40 columns
    even = _split(random_csb((40, 64), 0.3, np.float32, 1, block_size=16)[0], 1, 4)
    assert not even.is_padded
    z = jnp.ones((2, 64))
    assert jcs.to_shard_layout(z, even) is z and jcs.from_shard_layout(z, even) is z
    with pytest.raises(ValueError, match="must have 72 entries along axis 1"):
        jcs.to_shard_layout(np.ones((3, 70)), S)
    with pytest.raises(ValueError, match="4 \\* 24 = 96 entries"):
        jcs.from_shard_layout(np.ones((3, 72)), S)


# --- imbalance ------------------------------------------------------------------------------


def test_imbalance_is_reported_warned_and_balanced():
    """A pattern whose first block-row is dense: the even split overloads shard 0; the
    balanced split moves the cut points to even out the nonzero counts."""
    w = np.zeros((128, 64), np.float32)
    w[:16] = 1.0  # 1024 nonzeros in block-row 0
    rng = np.random.default_rng(seed_of("imbalance"))
    w[16:] = (rng.random((112, 64)) < 0.1) * rng.standard_normal((112, 64))
    A = jaxcsb.CSB.fromdense(w, block_size=16)
    with pytest.warns(jcs.ShardImbalanceWarning, match="balance=True"):
        even = jcs.shard_rows(A, 4)
    stats = even.stats()
    assert stats.nnz == tuple(int(np.count_nonzero(w[32 * i : 32 * i + 32])) for i in range(4))
    assert stats.imbalance == pytest.approx(max(stats.nnz) / (sum(stats.nnz) / 4))
    assert stats.padded_nnz == max(stats.nnz) and stats.sizes == (32, 32, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = jcs.shard_rows(A, 4, warn_above=None)
        balanced = jcs.shard_rows(A, 4, balance=True, warn_above=10.0)
    assert quiet.stats() == stats
    assert balanced.bounds[1] == 16, "the dense block-row should be a shard of its own"
    assert balanced.stats().imbalance < stats.imbalance
    _assert_same_csb(jcs.unshard(balanced), A)


# --- argument checks -------------------------------------------------------------------------


def test_matmul_and_layer_arguments_are_checked_before_tracing():
    A, _ = random_csb((48, 40), 0.3, np.float32, seed_of("args"), block_size=16)
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    S = _split(A, 0, 2)
    x = np.ones((3, 48), np.float32)
    with pytest.raises(ValueError, match="2 shards but mesh axis 'model' has 1 devices"):
        jcs.matmul(x, S, mesh=mesh, model_axis="model")
    with pytest.raises(ValueError, match="model_axis must name the mesh axis"):
        jcs.matmul(x, S, mesh=mesh)
    with pytest.raises(ValueError, match="must name an axis of the mesh"):
        jcs.matmul(x, A, mesh=mesh, batch_axis="data")
    with pytest.raises(ValueError, match="model_axis needs a ShardedCSB"):
        jcs.matmul(x, A, mesh=mesh, model_axis="model")
    S1 = _split(A, 0, 1)
    with pytest.raises(ValueError, match="a must have shape \\(..., 48\\) .*to_shard_layout"):
        jcs.matmul(np.ones((3, 40), np.float32), S1, mesh=mesh, model_axis="model")
    with pytest.raises(ValueError, match="b must have shape \\(40, n\\), got \\(48, 2\\)"):
        jcs.matmul(A, np.ones((48, 2), np.float32), mesh=mesh)
    with pytest.raises(ValueError, match="exactly one operand may be sparse"):
        jcs.matmul(A, S1, mesh=mesh, model_axis="model")

    nnx = pytest.importorskip("flax.nnx")
    from jaxcsb.nnx import SparseLinear
    from jaxcsb.sharding.nnx import ShardedSparseLinear

    layer = SparseLinear.from_dense(np.asarray(_dense(A), np.float32))
    with pytest.raises(ValueError, match="split must be 'out' or 'in', got 'rows'"):
        ShardedSparseLinear(layer, mesh=mesh, model_axis="model", split="rows")
    with pytest.raises(ValueError, match="layer must be a jaxcsb.nnx.SparseLinear"):
        ShardedSparseLinear(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), mesh=mesh, model_axis="model")


# --- collectives in HLO ---------------------------------------------------------------------------

_HLO = """
ENTRY %main {
  %p = f32[8,40]{1,0} parameter(0)
  %all-gather = f32[32,40]{1,0} all-gather(%p), channel_id=1, dimensions={0}
  %ars = (f32[], f32[16]{0}) all-reduce-start(%a, %b), channel_id=2, to_apply=%add
  %ard = (f32[], f32[16]{0}) all-reduce-done(%ars)
  %cp = f32[4]{0} collective-permute(%q), source_target_pairs={{0,1}}
  %fusion = f32[8]{0} fusion(%p), kind=kLoop, metadata={op_name="all-gather"}
}
"""


def test_collectives_finds_each_kind_once():
    found = jcs.collectives(_HLO)
    assert sorted(found) == ["all-gather", "all-reduce", "collective-permute"]
    assert [len(v) for v in found.values()] == [1, 1, 1]
    assert found["all-gather"][0].startswith("%all-gather = f32[32,40]")
    assert jcs.collectives("%x = f32[2]{0} add(%a, %b)") == {}


# --- the multi-device cases, in a process with four host devices -----------------------------


def test_multidevice_cases_in_a_subprocess(tmp_path):
    """Runs test_sharding_multidevice.py where XLA has four CPU devices (the flag must be set
    before JAX starts, so it cannot be this process). Every case must run: a skip fails."""
    if jax.device_count() >= 4:
        pytest.skip("this process has 4 devices: test_sharding_multidevice.py runs here")
    path = Path(__file__).with_name("test_sharding_multidevice.py")
    proc = run_with_host_devices(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(path)],
        devices=4,
        cwd=tmp_path,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    # pytest's summary is the last line of stdout (plugins may warn on stderr after it).
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"multi-device cases failed:\n{out[-12000:]}"
    assert "passed" in summary and "skipped" not in summary, out[-6000:]
