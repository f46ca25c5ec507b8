"""The example models: a short sparse training run whose loss goes down, and both scripts run
end to end at tiny sizes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_with_host_devices

nnx = pytest.importorskip("flax.nnx", reason="the models need flax")
optax = pytest.importorskip("optax", reason="the models need optax")

from jaxcsb.nnx import SparseLinear  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_sparse_mlp_training_lowers_the_loss():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        SparseLinear(10, 64, sparsity=0.8, rngs=rngs),
        nnx.relu,
        SparseLinear(64, 1, sparsity=0.5, rngs=rngs),
    )
    x = jax.random.normal(jax.random.key(1), (128, 10))
    y = jnp.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(60)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.fixture
def models_on_path(monkeypatch):
    if os.environ.get("JAXCSB_TEST_MODELS") != "1":
        pytest.skip(
            "set JAXCSB_TEST_MODELS=1 to run the example scripts end to end (each compiles "
            "several models: about a minute of CPU time together)"
        )
    monkeypatch.syspath_prepend(str(MODELS))


def test_mlp_digits_script(models_on_path, tmp_path):
    pytest.importorskip("sklearn", reason="mlp_digits.py needs scikit-learn's digits")
    import mlp_digits

    out = tmp_path / "digits.json"
    results = mlp_digits.main(
        "--hidden 32 --dense-epochs 3 --prune-epochs 3 --finetune-epochs 1 --batch-size 128 "
        f"--lr 0.01 --timing-repeats 2 --no-progress --json {out}".split()
    )
    assert json.loads(out.read_text())["sparse"]["nnz"] == results["sparse"]["nnz"]
    # 90% of each layer's weights pruned, exactly.
    sizes = [64 * 32, 32 * 32, 32 * 10]
    assert results["sparse"]["nnz"] == sum(n - round(0.9 * n) for n in sizes)
    assert results["dense"]["test_accuracy"] > 0.5
    assert results["sparse"]["bytes"]["total"] < 0.3 * results["dense"]["bytes"]["total"]


def test_transformer_lm_script(models_on_path, tmp_path):
    pytest.importorskip("matplotlib", reason="transformer_lm.py plots the loss curves")
    import transformer_lm

    plot = tmp_path / "loss.png"
    results, targets = transformer_lm.main(
        "--d-model 16 --heads 2 --ffn 32 --layers 1 --seq-len 8 --batch-size 4 --steps 8 "
        "--timing-skip 2 --sparsities 0.9 --dtypes float32 --no-highest --no-bcoo --no-progress "
        f"--plot {plot}".split()
    )
    assert [r["variant"] for r in results] == ["dense f32", "sparse 90% f32"]
    assert all(np.isfinite(r["losses"]).all() and r["tokens_per_s"] > 0 for r in results)
    assert set(targets) == {"sparse90_bytes_vs_dense"}
    # The q, k, v, o, up and down kernels at 90%: well under 0.3 of the dense bytes.
    assert targets["sparse90_bytes_vs_dense"] < 0.5
    assert plot.stat().st_size > 0


def test_transformer_scaling_script_on_two_host_devices(models_on_path, tmp_path):
    """The scaling script in a process with two CPU devices (the flag must be set before JAX
    starts): every set-up's first loss matches one device's (the script checks it), and the
    JSON lists the three set-ups."""
    out = tmp_path / "scaling.json"
    proc = run_with_host_devices(
        [
            sys.executable,
            str(MODELS / "transformer_scaling.py"),
            *"--block-size 16 --timing-rounds 1 --timing-repeats 2 --json".split(),
            str(out),
        ],
        devices=2,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert [r["setup"] for r in results] == ["1 device", "data parallel", "model parallel"]
    assert [r["devices"] for r in results] == [1, 2, 2]
    assert all(r["tokens_per_s"] > 0 for r in results)
