"""A small Transformer language model with sparse attention projections and feed-forward layers.

Every attention projection (q, k, v, o) and both feed-forward layers of every block are
``jaxcsb.nnx.SparseLinear`` with a fixed random pattern (sparse training from scratch); the
embeddings, layer norms and output head stay dense. The task needs no download: sequences of
random symbols followed by a separator and the same symbols reversed; the loss is the
cross-entropy on the reversed half, which a model can only predict by attending back (it falls
from log(vocab) towards 0 as the model learns).

The same model is trained, under ``jax.jit`` with optax Adam, in several variants:

* dense ``nnx.Linear`` at the default precision and (float32) at ``precision="highest"``;
* SparseLinear at each ``--sparsities`` value, in float32 and in bfloat16 (parameters float32,
  computation bfloat16);
* a peer built on ``jax.experimental.sparse`` BCOO (``bcoo_linear.BCOOLinear``) at 90%.

Reported: tokens per second of the training step (median step time, compilation excluded,
measured after training with the variants taking turns),
bytes of parameters plus optimizer state (plus the sparse index arrays), final loss, a PNG of
the loss curves, and the ratios behind the GPU targets (sparse 90% float32 against dense at
precision "highest" and against BCOO; bytes against dense).

    python models/transformer_lm.py                  # CPU-sized defaults, a few minutes
    python models/transformer_lm.py --preset gpu     # d_model 1024, 4 blocks, 4096 tokens/step
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

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

from jaxcsb.nnx import SparseLinear, SparseStructure

PRESETS = {
    "cpu": dict(
        d_model=64, layers=2, heads=4, ffn=256, seq_len=32, batch_size=16, steps=200, lr=3e-3
    ),
    # 4096 tokens per step through 1024 x 1024 and 1024 x 4096 layers: the problem sizes of the
    # kernel benchmarks.
    "gpu": dict(
        d_model=1024, layers=4, heads=16, ffn=4096, seq_len=256, batch_size=16, steps=100, lr=5e-4
    ),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for the size options whose default comes from the preset."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="size preset")
    for name, kind, what in [
        ("d-model", int, "model width"),
        ("layers", int, "Transformer blocks"),
        ("heads", int, "attention heads"),
        ("ffn", int, "feed-forward width"),
        ("seq-len", int, "tokens per sequence (even)"),
        ("batch-size", int, "sequences per step"),
        ("steps", int, "training steps per variant"),
        ("lr", float, "Adam learning rate after a linear warm-up over 10%% of the steps"),
    ]:
        key = name.replace("-", "_")
        presets = ", ".join(f"{k}: {v[key]}" for k, v in PRESETS.items())
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{what} ({presets})")
    p.add_argument("--vocab", type=int, default=16, help="symbols, the separator included")
    p.add_argument(
        "--sparsities",
        type=float,
        nargs="*",
        default=[0.5, 0.8, 0.9, 0.95],
        metavar="S",
        help="sparsities of the SparseLinear variants",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="computation dtypes (parameters stay float32)",
    )
    p.add_argument("--no-bcoo", action="store_true", help="skip the BCOO peer")
    p.add_argument("--no-highest", action="store_true", help="skip dense at precision highest")
    p.add_argument(
        "--timing-rounds", type=int, default=5, help="rounds of timing, variants in turn"
    )
    p.add_argument("--timing-repeats", type=int, default=10, help="timed steps per round")
    p.add_argument(
        "--timing-skip", type=int, default=5, help="first steps left out of the in-loop timing"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the init, patterns and data")
    p.add_argument("--plot", default="transformer_lm_loss.png", help="loss-curve PNG path")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seq_len % 2 or args.seq_len < 2:
        p.error(f"--seq-len must be even and >= 2, got {args.seq_len}")
    if args.d_model % args.heads:
        p.error(f"--d-model ({args.d_model}) must be a multiple of --heads ({args.heads})")
    return args


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to build the linear layers of the blocks."""

    name: str
    kind: str  # "dense", "sparse" or "bcoo"
    dtype: str  # "float32" or "bfloat16"
    sparsity: float = 0.0
    precision: str | None = None
    block_size: int | None = None  # CSB block size of the sparse layers (None: from the density)

    def linear(self, d_in, d_out, rngs):
        dtype = jnp.dtype(self.dtype)
        if self.kind == "dense":
            return nnx.Linear(d_in, d_out, dtype=dtype, precision=self.precision, rngs=rngs)
        if self.kind == "sparse":
            return SparseLinear(
                d_in,
                d_out,
                sparsity=self.sparsity,
                block_size=self.block_size,
                dtype=dtype,
                rngs=rngs,
            )
        from bcoo_linear import BCOOLinear

        return BCOOLinear(d_in, d_out, sparsity=self.sparsity, dtype=dtype, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, d, heads, ffn, variant: Variant, rngs):
        dtype = jnp.dtype(variant.dtype)
        self.heads = heads
        self.norm1 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.q = variant.linear(d, d, rngs)
        self.k = variant.linear(d, d, rngs)
        self.v = variant.linear(d, d, rngs)
        self.o = variant.linear(d, d, rngs)
        self.norm2 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.up = variant.linear(d, ffn, rngs)
        self.down = variant.linear(ffn, d, rngs)

    def attention(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.reshape(b, t, h, d // h)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // h)
        causal = jnp.tril(jnp.ones((t, t), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1).astype(v.dtype)
        return self.o(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d))

    def __call__(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class TransformerLM(nnx.Module):
    def __init__(self, args, variant: Variant, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(variant.dtype)
        self.embed = nnx.Embed(args.vocab, args.d_model, dtype=dtype, rngs=rngs)
        self.position = nnx.Embed(args.seq_len, args.d_model, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [Block(args.d_model, args.heads, args.ffn, variant, rngs) for _ in range(args.layers)]
        )
        self.norm = nnx.LayerNorm(args.d_model, rngs=rngs)
        self.head = nnx.Linear(args.d_model, args.vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x.astype(jnp.float32)))


# --- the task ----------------------------------------------------------------------------------


def make_batch(key, batch_size, seq_len, vocab):
    """Inputs and targets of the reversal task, and the mask of the scored positions.

    A sequence is ``a_1 .. a_k SEP a_k .. a_1`` (k = seq_len / 2, symbols 1..vocab-1, SEP = 0);
    the model reads its first seq_len tokens and predicts the next one at each position; only
    the reversed half is scored.
    """
    k = seq_len // 2
    symbols = jax.random.randint(key, (batch_size, k), 1, vocab)
    sep = jnp.zeros((batch_size, 1), symbols.dtype)
    sequence = jnp.concatenate([symbols, sep, symbols[:, ::-1]], axis=1)
    scored = jnp.arange(seq_len) >= k
    return sequence[:, :-1], sequence[:, 1:], scored


def loss_fn(model, inputs, targets, scored):
    logits = model(inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * scored) / (inputs.shape[0] * jnp.sum(scored))


# --- training one variant ----------------------------------------------------------------------


def train_variant(args, variant: Variant, position: int):
    model = TransformerLM(args, variant, rngs=nnx.Rngs(args.seed))
    warmup = max(1, args.steps // 10)
    schedule = optax.linear_schedule(0.0, args.lr, warmup)
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
    params = nnx.state(model, nnx.Param)
    structure = nnx.state(model, SparseStructure)
    opt_state = nnx.state(optimizer)
    nbytes = {
        "params": tree_bytes(params),
        "optimizer": tree_bytes(opt_state),
        "structure": tree_bytes(structure),
    }
    nbytes["total"] = sum(nbytes.values())
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def batch_fn(step):
        key = jax.random.fold_in(jax.random.key(args.seed + 1), step)
        return make_batch(key, args.batch_size, args.seq_len, args.vocab)

    @jax.jit
    def train_step(state, inputs, targets, scored):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, inputs, targets, scored)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    losses, times = [], []
    bar = tqdm(
        range(args.steps),
        desc=f"{variant.name:>22}",
        disable=args.no_progress,
        leave=False,
        position=position,
        dynamic_ncols=True,
    )
    compile_start = time.perf_counter()
    for step in bar:
        batch = jax.block_until_ready(batch_fn(step))
        start = time.perf_counter()
        state, loss = jax.block_until_ready(train_step(state, *batch))
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    wall = time.perf_counter() - compile_start
    timed = times[args.timing_skip :] or times
    batch = batch_fn(0)
    result = {
        "variant": variant.name,
        "kind": variant.kind,
        "dtype": variant.dtype,
        "sparsity": variant.sparsity,
        "precision": variant.precision,
        "step_s_training_loop": statistics.median(timed),
        "first_step_s": times[0],
        "wall_s": wall,
        "bytes": nbytes,
        "losses": losses,
        "final_loss": float(np.mean(losses[-10:])),
    }
    return result, lambda: train_step(state, *batch)


def variants(args):
    out = []
    for dtype in args.dtypes:
        short = "f32" if dtype == "float32" else "bf16"
        out.append(Variant(f"dense {short}", "dense", dtype))
        if dtype == "float32" and not args.no_highest:
            out.append(Variant("dense f32 highest", "dense", dtype, precision="highest"))
        for s in args.sparsities:
            out.append(Variant(f"sparse {s:.0%} {short}", "sparse", dtype, sparsity=s))
    if not args.no_bcoo and "float32" in args.dtypes:
        out.append(Variant("BCOO 90% f32", "bcoo", "float32", sparsity=0.9))
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in results}, reverse=True)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        for r in results:
            if r["dtype"] == dtype:
                style = "--" if r["kind"] != "sparse" else "-"
                ax.plot(r["losses"], style, label=r["variant"], linewidth=1)
        ax.set_title(f"reversal task, {dtype}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (scored half)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(args, results):
    by_name = {r["variant"]: r for r in results}
    dense32 = by_name.get("dense f32")
    rows = []
    for r in results:
        ratio_bytes = r["bytes"]["total"] / dense32["bytes"]["total"] if dense32 else float("nan")
        speed = dense32 and r["tokens_per_s"] / dense32["tokens_per_s"]
        rows.append(
            [
                r["variant"],
                f"{r['tokens_per_s']:,.0f}",
                f"{1e3 * r['step_s']:.2f}",
                f"{speed:.2f}x" if speed else "",
                format_bytes(r["bytes"]["total"]),
                f"{ratio_bytes:.3f}",
                f"{r['final_loss']:.3f}",
            ]
        )
    headers = [
        "variant",
        "tokens/s",
        "step (ms)",
        "speed vs dense f32",
        "params+opt state",
        "bytes vs dense",
        "final loss",
    ]
    print(markdown_table(headers, rows))
    targets = {}
    sparse90 = by_name.get("sparse 90% f32")
    if sparse90:
        highest = by_name.get("dense f32 highest")
        bcoo = by_name.get("BCOO 90% f32")
        if highest:
            targets["sparse90_vs_dense_highest_speedup"] = highest["step_s"] / sparse90["step_s"]
        if bcoo:
            targets["sparse90_vs_bcoo_speedup"] = bcoo["step_s"] / sparse90["step_s"]
        if dense32:
            targets["sparse90_bytes_vs_dense"] = (
                sparse90["bytes"]["total"] / dense32["bytes"]["total"]
            )
    goals = {
        "sparse90_vs_dense_highest_speedup": (">=", 1.5, "train step vs dense precision=highest"),
        "sparse90_vs_bcoo_speedup": (">=", 10.0, "train step vs BCOO 90%"),
        "sparse90_bytes_vs_dense": ("<=", 0.3, "params + optimizer state bytes vs dense"),
    }
    print()
    print("sparse 90% float32 (targets are for the GPU preset):")
    for key, value in targets.items():
        op, goal, what = goals[key]
        met = value >= goal if op == ">=" else value <= goal
        print(f"  {what}: {value:.2f}x (target {op} {goal}x: {'met' if met else 'not met'})")
    return targets


def main(argv=None):
    args = parse_args(argv)
    tokens = args.batch_size * args.seq_len
    print(
        f"Transformer LM: d_model {args.d_model}, {args.layers} blocks, {args.heads} heads, "
        f"ffn {args.ffn}, {tokens} tokens/step ({args.batch_size} x {args.seq_len}), "
        f"{args.steps} steps per variant; device {device_description()}"
    )
    todo = variants(args)
    results, steps = [], {}
    outer = tqdm(todo, desc="variants", disable=args.no_progress, dynamic_ncols=True)
    for v in outer:
        result, steps[v.name] = train_variant(args, v, position=1)
        results.append(result)
        outer.write(
            f"{v.name:>22}: loss {result['final_loss']:.3f}, "
            f"{format_bytes(result['bytes']['total'])}, "
            f"{1e3 * result['step_s_training_loop']:.2f} ms/step while training"
        )
    outer.close()
    # The timings reported: every variant's train step, taking turns over the variants in
    # several rounds, so that changes in the machine's load hit all of them alike.
    print(f"timing: {args.timing_rounds} rounds x {args.timing_repeats} steps per variant")
    medians = interleaved_medians(steps, rounds=args.timing_rounds, repeats=args.timing_repeats)
    for r in results:
        r["step_s"] = medians[r["variant"]]
        r["tokens_per_s"] = tokens / r["step_s"]
    print()
    targets = summarize(args, results)
    plot(results, args.plot)
    print(f"loss curves: {args.plot}")
    if args.json:
        write_json(
            args.json,
            {"args": vars(args), "device": device_description(), "results": results, **targets},
        )
        print(f"results written to {args.json}")
    return results, targets


if __name__ == "__main__":
    main()
