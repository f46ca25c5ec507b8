"""An MLP on scikit-learn's digits: trained dense, pruned gradually to 90%, fine-tuned sparse.

Three phases, one model:

1. dense training (nnx.Linear layers, Adam);
2. gradual magnitude pruning while training (the masked-dense phase): after every optimizer step
   the kernels are masked, and the masks follow the schedule of Zhu & Gupta (2018) from 0 to
   the final sparsity (``jaxcsb.pruning.prune_step``);
3. the pattern is frozen: every nnx.Linear becomes a ``jaxcsb.nnx.SparseLinear``
   (``jaxcsb.pruning.sparsify``), which stores only the kept weights in CSB, and training goes
   on with a new optimizer over those values alone.

The digits (1797 8x8 images, 10 classes) ship inside scikit-learn: nothing is downloaded. Runs
on the default JAX device (the GPU when there is one). At the end: test accuracy, parameter
bytes and train/inference step times of the dense and the sparse model.

    python models/mlp_digits.py                 # defaults: hidden 512, 90% sparsity
    python models/mlp_digits.py --sparsity 0.95 --json results.json
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (
    device_description,
    format_bytes,
    interleaved_medians,
    markdown_table,
    tree_bytes,
    write_json,
)
from flax import nnx
from tqdm import tqdm

from jaxcsb import pruning
from jaxcsb.nnx import SparseLinear, SparseStructure


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--hidden", type=int, default=512, help="width of the two hidden layers")
    p.add_argument("--sparsity", type=float, default=0.9, help="final fraction of pruned weights")
    p.add_argument(
        "--scope",
        choices=("layer", "global"),
        default="layer",
        help="prune each layer to the sparsity, or all layers together with one threshold",
    )
    p.add_argument("--dense-epochs", type=int, default=40, help="epochs of dense training")
    p.add_argument("--prune-epochs", type=int, default=40, help="epochs of gradual pruning")
    p.add_argument("--finetune-epochs", type=int, default=30, help="epochs with SparseLinear")
    p.add_argument("--batch-size", type=int, default=64, help="images per training step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling")
    p.add_argument(
        "--timing-rounds", type=int, default=5, help="rounds of timing, dense and sparse in turn"
    )
    p.add_argument("--timing-repeats", type=int, default=10, help="timed calls per round")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class MLP(nnx.Module):
    """64 -> hidden -> hidden -> 10 with ReLU."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [
                nnx.Linear(64, hidden, rngs=rngs),
                nnx.Linear(hidden, hidden, rngs=rngs),
                nnx.Linear(hidden, 10, rngs=rngs),
            ]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def load_digits(seed):
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_steps(graphdef):
    """Jitted functions over the split (model, optimizer) state: the fast path for small
    models (no Python graph traversal per call)."""

    @jax.jit
    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def predict(state, x):
        model, _ = nnx.merge(graphdef, state)
        return jnp.argmax(model(x), axis=-1)

    return train_step, predict


def make_prune_step(graphdef, schedule, scope):
    @jax.jit
    def prune_train_step(state, masks, step, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        masks = pruning.prune_step(model, masks, step, schedule, scope=scope)
        return nnx.state((model, optimizer)), masks, loss

    return prune_train_step


def batches(x, y, batch_size, rng):
    """One epoch of shuffled, full batches (one shape: one compilation)."""
    order = rng.permutation(len(x))
    for i in range(0, len(x) - batch_size + 1, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def accuracy(predict, state, x, y) -> float:
    return float(np.mean(np.asarray(predict(state, x)) == y))


def model_bytes(model) -> dict:
    params = tree_bytes(nnx.state(model, nnx.Param))
    structure = tree_bytes(nnx.state(model, SparseStructure))
    return {"params": params, "structure": structure, "total": params + structure}


def main(argv=None):
    args = parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        sys.exit(f"--sparsity must be in [0, 1), got {args.sparsity}")
    x_train, x_test, y_train, y_test = load_digits(args.seed)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size
    total_steps = steps_per_epoch * (args.dense_epochs + args.prune_epochs + args.finetune_epochs)
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test images; device {device_description()}"
    )

    model = MLP(args.hidden, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    train_step, predict = make_steps(graphdef)
    bar = tqdm(total=total_steps, disable=args.no_progress, unit="step", dynamic_ncols=True)
    results = {"args": vars(args), "device": device_description()}
    start = time.perf_counter()

    # 1. dense -----------------------------------------------------------------------------------
    bar.set_description("dense")
    for _ in range(args.dense_epochs):
        for xb, yb in batches(x_train, y_train, args.batch_size, rng):
            state, loss = train_step(state, xb, yb)
            bar.update()
        bar.set_postfix(loss=f"{float(loss):.4f}")
    dense_acc = accuracy(predict, state, x_test, y_test)
    nnx.update((model, optimizer), state)
    dense_bytes = model_bytes(model)
    xb, yb = x_train[: args.batch_size], y_train[: args.batch_size]
    dense_calls = {
        "dense train": lambda f=train_step, s=state: f(s, xb, yb),
        "dense inference": lambda f=predict, s=state: f(s, x_test),
    }

    # 2. gradual pruning (masked dense) ----------------------------------------------------------
    begin = args.dense_epochs * steps_per_epoch
    prune_steps = args.prune_epochs * steps_per_epoch
    # Reach the final sparsity after 3/4 of the phase, updating the masks once per epoch; the
    # last quarter trains at the final sparsity before the pattern is frozen.
    schedule = pruning.polynomial_schedule(
        0.0,
        args.sparsity,
        begin_step=begin,
        end_step=begin + max(1, (3 * prune_steps) // 4),
        frequency=steps_per_epoch,
    )
    prune_train_step = make_prune_step(graphdef, schedule, args.scope)
    masks = pruning.init_masks(model)
    step = begin
    bar.set_description("pruning")
    for _ in range(args.prune_epochs):
        for xb, yb in batches(x_train, y_train, args.batch_size, rng):
            state, masks, loss = prune_train_step(state, masks, jnp.int32(step), xb, yb)
            step += 1
            bar.update()
        bar.set_postfix(loss=f"{float(loss):.4f}", sparsity=f"{float(schedule(step)):.3f}")
    pruned_acc = accuracy(predict, state, x_test, y_test)
    nnx.update((model, optimizer), state)

    # 3. sparse fine-tuning -----------------------------------------------------------------------
    pruning.sparsify(model, masks=masks)
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    train_step, predict = make_steps(graphdef)
    bar.set_description("sparse")
    for _ in range(args.finetune_epochs):
        for xb, yb in batches(x_train, y_train, args.batch_size, rng):
            state, loss = train_step(state, xb, yb)
            bar.update()
        bar.set_postfix(loss=f"{float(loss):.4f}")
    bar.close()
    sparse_acc = accuracy(predict, state, x_test, y_test)
    nnx.update((model, optimizer), state)
    sparse_bytes = model_bytes(model)
    # Dense and sparse steps take turns, so that changes in the machine's load hit both.
    times = interleaved_medians(
        {
            **dense_calls,
            "sparse train": lambda f=train_step, s=state: f(s, xb, yb),
            "sparse inference": lambda f=predict, s=state: f(s, x_test),
        },
        rounds=args.timing_rounds,
        repeats=args.timing_repeats,
    )
    dense_train_s, dense_infer_s = times["dense train"], times["dense inference"]
    sparse_train_s, sparse_infer_s = times["sparse train"], times["sparse inference"]
    elapsed = time.perf_counter() - start

    layers = pruning.layer_sparsity(model)
    nnz = sum(layer.nnz for layer in model.layers if isinstance(layer, SparseLinear))
    results.update(
        dense={
            "test_accuracy": dense_acc,
            "bytes": dense_bytes,
            "train_step_s": dense_train_s,
            "inference_s": dense_infer_s,
        },
        pruned_masked_dense={"test_accuracy": pruned_acc},
        sparse={
            "test_accuracy": sparse_acc,
            "bytes": sparse_bytes,
            "train_step_s": sparse_train_s,
            "inference_s": sparse_infer_s,
            "nnz": nnz,
            "layer_sparsity": layers,
            "block_sizes": [layer.block_size for layer in model.layers],
        },
        accuracy_drop_points=100 * (dense_acc - sparse_acc),
        seconds=elapsed,
    )
    ms = lambda s: f"{1e3 * s:.3f}"  # noqa: E731
    rows = [
        [
            "dense (nnx.Linear)",
            f"{100 * dense_acc:.2f}%",
            format_bytes(dense_bytes["total"]),
            ms(dense_train_s),
            ms(dense_infer_s),
        ],
        [
            f"pruned {args.sparsity:.0%}, masked dense",
            f"{100 * pruned_acc:.2f}%",
            "(as dense)",
            "",
            "",
        ],
        [
            f"sparse {args.sparsity:.0%} (SparseLinear, CSB)",
            f"{100 * sparse_acc:.2f}%",
            format_bytes(sparse_bytes["total"]),
            ms(sparse_train_s),
            ms(sparse_infer_s),
        ],
    ]
    headers = [
        "model",
        "test accuracy",
        "parameter bytes",
        f"train step, batch {args.batch_size} (ms)",
        f"inference, {len(x_test)} images (ms)",
    ]
    print()
    print(markdown_table(headers, rows))
    print()
    print(
        f"sparse / dense: parameter bytes {sparse_bytes['total'] / dense_bytes['total']:.3f}x, "
        f"train step time {sparse_train_s / dense_train_s:.2f}x, "
        f"inference time {sparse_infer_s / dense_infer_s:.2f}x"
    )
    print(
        "layer sparsity: "
        + ", ".join(f"{name} {s:.3f}" for name, s in layers.items())
        + f"; accuracy drop {100 * (dense_acc - sparse_acc):+.2f} points "
        + ("(within 1 point)" if dense_acc - sparse_acc <= 0.01 else "(MORE than 1 point)")
    )
    print(f"total time {elapsed:.1f} s on {device_description()}")
    if args.json:
        write_json(args.json, results)
        print(f"results written to {args.json}")
    return results


if __name__ == "__main__":
    main()
