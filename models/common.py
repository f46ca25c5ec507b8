"""Helpers shared by the example models: timing, byte counts and the summary table."""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np


def tree_bytes(tree) -> int:
    """Bytes held by the arrays of a pytree (an nnx.State, an optimizer state, a dict)."""
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)))


def interleaved_medians(calls: dict, *, rounds: int = 5, repeats: int = 10, warmup: int = 2):
    """Median wall time of each zero-argument callable in ``calls`` (name -> fn), measured in
    ``rounds`` rounds that take turns over all of them, ``repeats`` waited-for calls each, after
    ``warmup`` calls each. Taking turns spreads changes in the machine's load over every
    candidate instead of penalizing whichever ran during a busy spell."""
    for fn in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def markdown_table(headers, rows) -> str:
    """A Markdown table with aligned columns (readable in a terminal and in a README)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def device_description() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{jax.default_backend()} ({kind}), jax {jax.__version__}"


def write_json(path, results: dict) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
        f.write("\n")
