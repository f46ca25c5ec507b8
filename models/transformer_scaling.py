"""Scaling of the sparse Transformer example over the devices of one host.

The model of ``transformer_lm.py`` (every attention projection and feed-forward layer a
``jaxcsb.nnx.SparseLinear``) trains one Adam step at a time in three set-ups:

* one device: the whole batch on the first device;
* data parallel: the batch split over all devices, the weights replicated, the gradients
  averaged once per step (``jaxcsb.sharding.nnx.data_parallel_value_and_grad``);
* model parallel (Megatron style): in every block q, k, v and the first feed-forward layer are
  split by output features (each device owns a share of the heads and of the hidden units, no
  communication), o and the second feed-forward layer by input features (one ``psum`` each),
  with ``jaxcsb.sharding.nnx.ShardedSparseLinear``; the batch is replicated.

Each set-up starts from the same weights; the first step's loss is checked against the
one-device loss before anything is timed. Reported: median step time (the set-ups take turns),
tokens per second, and the speed-up over one device.

    python models/transformer_scaling.py --preset gpu           # on a machine with 2+ GPUs
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python models/transformer_scaling.py
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import optax
from common import device_description, interleaved_medians, markdown_table, write_json
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from transformer_lm import PRESETS, TransformerLM, Variant, loss_fn, make_batch

from jaxcsb.sharding.nnx import ShardedSparseLinear, data_parallel_value_and_grad


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model size preset")
    p.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the sparse layers")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="CSB block size (default: from the density); model parallelism needs d_model and "
        "ffn / devices to be multiples of it",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="sequences per step (default: the preset's)"
    )
    p.add_argument("--devices", type=int, default=None, help="devices to use (default: all)")
    p.add_argument("--vocab", type=int, default=16, help="symbols, the separator included")
    p.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default: the preset's)"
    )
    p.add_argument("--timing-rounds", type=int, default=5, help="rounds of timing")
    p.add_argument("--timing-repeats", type=int, default=10, help="timed steps per round")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, patterns and data")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    devices = jax.device_count() if args.devices is None else args.devices
    if not 2 <= devices <= jax.device_count():
        p.error(f"--devices must be in 2..{jax.device_count()} (devices here), got {devices}")
    if args.batch_size % devices or args.heads % devices:
        p.error(
            f"--batch-size ({args.batch_size}) and the heads ({args.heads}) must be multiples "
            f"of the devices ({devices})"
        )
    args.devices = devices
    return args


def split_blocks(model, mesh):
    """Splits every block's layers over mesh axis "model" in place (Megatron pairs)."""
    for block in model.blocks:
        q = ShardedSparseLinear(block.q, mesh=mesh, model_axis="model", split="out")
        block.q = q
        block.k = ShardedSparseLinear(
            block.k, mesh=mesh, model_axis="model", split="out", bounds=q.bounds
        )
        block.v = ShardedSparseLinear(
            block.v, mesh=mesh, model_axis="model", split="out", bounds=q.bounds
        )
        block.o = ShardedSparseLinear(
            block.o, mesh=mesh, model_axis="model", split="in", bounds=q.bounds
        )
        up = ShardedSparseLinear(block.up, mesh=mesh, model_axis="model", split="out")
        block.up = up
        block.down = ShardedSparseLinear(
            block.down, mesh=mesh, model_axis="model", split="in", bounds=up.bounds
        )


def make_step(model, grad_fn, lr):
    """A jitted Adam step over (model, optimizer) state, and that state."""
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, inputs, targets):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = grad_fn(model, inputs, targets)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return step, state


def setups(args, mesh):
    """name -> (step, state, batch placement) of each set-up, all from the same weights."""
    variant = Variant(
        "sparse", "sparse", args.dtype, sparsity=args.sparsity, block_size=args.block_size
    )
    scored = jnp.arange(args.seq_len) >= args.seq_len // 2  # the task's scored half

    def task_loss(model, inputs, targets):
        return loss_fn(model, inputs, targets, scored)

    def fresh():
        return TransformerLM(args, variant, rngs=nnx.Rngs(args.seed))

    one = jax.devices()[0]
    with jax.default_device(one):
        single_model = fresh()
    out = {"1 device": (*make_step(single_model, nnx.value_and_grad(task_loss), args.lr), one)}

    dp_model = fresh()
    nnx.update(dp_model, jax.device_put(nnx.state(dp_model), NamedSharding(mesh, P())))
    dp_grad = data_parallel_value_and_grad(task_loss, mesh=mesh, batch_axis="model")
    batch_split = NamedSharding(mesh, P("model"))
    out["data parallel"] = (*make_step(dp_model, dp_grad, args.lr), batch_split)

    mp_model = fresh()
    split_blocks(mp_model, mesh)
    replicated = NamedSharding(mesh, P())
    out["model parallel"] = (
        *make_step(mp_model, nnx.value_and_grad(task_loss), args.lr),
        replicated,
    )
    return out


def main(argv=None):
    args = parse_args(argv)
    mesh = jax.make_mesh((args.devices,), ("model",), devices=jax.devices()[: args.devices])
    tokens = args.batch_size * args.seq_len
    print(
        f"Transformer LM scaling: d_model {args.d_model}, {args.layers} blocks, ffn {args.ffn}, "
        f"{args.sparsity:.0%} sparse {args.dtype}, {tokens} tokens/step; {args.devices} devices, "
        f"{device_description()}"
    )
    batch = make_batch(jax.random.key(args.seed + 1), args.batch_size, args.seq_len, args.vocab)
    calls, losses = {}, {}
    for name, (step, state, placement) in setups(args, mesh).items():
        placed = (jax.device_put(batch[0], placement), jax.device_put(batch[1], placement))
        _, loss = step(state, *placed)
        losses[name] = float(loss)
        calls[name] = lambda step=step, state=state, placed=placed: step(state, *placed)
    # The same weights and batch give the same first loss in every set-up.
    for name, loss in losses.items():
        if not math.isclose(
            loss, losses["1 device"], rel_tol=2e-2 if args.dtype != "float32" else 1e-4
        ):
            raise SystemExit(
                f"{name}: first loss {loss} differs from one device's {losses['1 device']}"
            )
    medians = interleaved_medians(calls, rounds=args.timing_rounds, repeats=args.timing_repeats)
    base = medians["1 device"]
    rows, results = [], []
    for name, seconds in medians.items():
        devices = 1 if name == "1 device" else args.devices
        rows.append(
            [
                name,
                devices,
                f"{1e3 * seconds:.2f}",
                f"{tokens / seconds:,.0f}",
                f"{base / seconds:.2f}x",
            ]
        )
        results.append(
            {
                "setup": name,
                "devices": devices,
                "step_s": seconds,
                "tokens_per_s": tokens / seconds,
                "speedup": base / seconds,
                "first_loss": losses[name],
            }
        )
    print(markdown_table(["set-up", "devices", "step (ms)", "tokens/s", "vs 1 device"], rows))
    if args.json:
        write_json(
            args.json, {"args": vars(args), "device": device_description(), "results": results}
        )
        print(f"results written to {args.json}")
    return results


if __name__ == "__main__":
    main()
