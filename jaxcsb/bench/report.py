"""Reporting a sweep: the terminal table, the JSON file and the PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .peers import PEERS

_STATUS_CELL = {"n/a": "n/a", "skipped": "skip", "error": "ERROR", "fail": "FAIL"}


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms >= 0.01 else f"{ms:.2g}"


def _peer_cell(peer: dict | None) -> str:
    if peer is None:
        return ""
    if peer.get("status") != "ok":
        return _STATUS_CELL.get(peer.get("status"), "?")
    cell = _fmt_ms(peer["ms"]) + ("*" if "fallback" in peer else "")
    if "speedup" in peer:
        cell += f" {peer['speedup']:.2f}x"
    return cell


def _mine_cells(rec) -> list[str]:
    mine = rec["peers"].get("jaxcsb")
    if mine is None:
        return ["", "", "", ""]
    if mine.get("status") != "ok":
        err = mine.get("rel_err")
        status = _STATUS_CELL.get(mine.get("status"), "?")
        return [status + (f" err={err:.2g}" if err is not None else ""), "", "", ""]
    ratio = rec.get("t_over_fwd")
    return [
        _fmt_ms(mine["ms"]) + ("*" if "fallback" in mine else ""),
        f"{mine['tflops']:.3g}",
        f"{mine['gbps']:.3g}",
        f"{ratio:.2f}" if ratio is not None else "",
    ]


def _matrix_label(rec) -> str:
    name = rec["matrix"]
    if name.startswith("dlmc:"):
        parts = name[5:].split("/")
        return f"{parts[0]}/{parts[-2]}/{parts[-1][-24:]}" if len(parts) >= 3 else name
    return name


def table(records) -> str:
    """One row per case: jaxcsb's time (ms), useful TFLOP/s, effective GB/s, transposed /
    forward time; then each peer's time (ms) and jaxcsb's speedup over it (peer / jaxcsb)."""
    peers = [p for p in PEERS if p != "jaxcsb" and any(p in r["peers"] for r in records)]
    head = ["matrix", "nnz", "N", "dtype", "product", "jaxcsb ms", "TFLOP/s", "GB/s", "T/fwd"]
    head += [PEERS[p].short for p in peers]
    rows = [head]
    for r in records:
        row = [_matrix_label(r), str(r["nnz"]), str(r["n"]), r["dtype"], r["product"]]
        row += _mine_cells(r)
        row += [_peer_cell(r["peers"].get(p)) for p in peers]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for k, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    legend = (
        "peer cells: time in ms and speedup = peer time / jaxcsb time; T/fwd: jaxcsb's "
        "transposed / forward time; n/a: the peer has no such product; skip: peer "
        "unavailable; FAIL: correctness check failed (not timed); *: timed as back-to-back "
        "dispatches because the loop failed (the JSON's 'fallback' says why)"
    )
    return "\n".join(lines + [legend])


def targets_text(results) -> str:
    if not results:
        return ""
    lines = ["targets:"]
    width = max(len(t["target"]) for t in results)
    for t in results:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        goal = "" if t["op"] == "info" else f"{t['op']} {t['threshold']:g}"
        lines.append(
            f"  {t['target'].ljust(width)}  {value:>8} {goal:>7}  {t['verdict'].upper()}"
            f"  ({t['reduce']} of {t['cases']})"
        )
    return "\n".join(lines)


def ceilings_text(c) -> str:
    if not c:
        return ""
    return (
        f"ceilings: copy {c['copy_gbps']:.4g} GB/s; GEMM {c['gemm_side']}^3 "
        f"f32 highest {c['gemm_fp32_highest_tflops']:.4g}, f32 default "
        f"{c['gemm_fp32_default_tflops']:.4g}, bf16 {c['gemm_bf16_tflops']:.4g} TFLOP/s"
    )


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(path, payload) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(payload), indent=1) + "\n")
    return path


def plot(records, path, title="") -> Path | None:
    """Speedup of jaxcsb over each peer against sparsity, one panel per product (log scale;
    points: cases; line: geometric mean over the cases at each sparsity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    products = list(dict.fromkeys(r["product"] for r in records))
    peers = [p for p in PEERS if p != "jaxcsb"]
    if not products:
        return None
    fig, axes = plt.subplots(
        1, len(products), figsize=(4.2 * len(products), 3.8), squeeze=False, sharey=True
    )
    sparsities = [r["sparsity"] for r in records]
    xlim = (min(sparsities) - 0.02, max(sparsities) + 0.02)
    for ax, product in zip(axes[0], products, strict=True):
        for i, peer in enumerate(peers):
            pts = [
                (r["sparsity"], r["peers"][peer]["speedup"])
                for r in records
                if r["product"] == product and "speedup" in r["peers"].get(peer, {})
            ]
            if not pts:
                continue
            color = f"C{i}"
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, s=12, alpha=0.5, color=color)
            by_s: dict[float, list[float]] = {}
            for s, v in pts:
                by_s.setdefault(round(s, 2), []).append(math.log(v))
            line = sorted((s, math.exp(sum(v) / len(v))) for s, v in by_s.items())
            ax.plot(*zip(*line, strict=True), color=color, label=PEERS[peer].short)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(product)
        ax.set_xlim(*xlim)
        ax.set_xlabel("sparsity")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("jaxcsb speedup (peer time / jaxcsb time)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.86, wspace=0.08)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
