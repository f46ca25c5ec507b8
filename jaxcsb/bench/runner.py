"""The sweep: every case of every group is checked against its reference, then timed.

A case is (matrix, N, dtype, product). For each peer of the group, in order (jaxcsb first):
prepare (untimed), one call whose output is compared with the reference (relative Frobenius
error within the dtype's tolerance), and only if that passes, warm-up and timing. A peer that
is unavailable, has no such product, raises, or fails the check is recorded with the reason
and not timed.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import timing
from .matrices import dlmc_files, dlmc_ns, dlmc_per_image, load_dlmc, synthetic
from .peers import PEERS, JaxCSB, NotApplicable
from .presets import Group
from .products import (
    DTYPES,
    TOLERANCE,
    TRANSPOSED_OF,
    attach_reference,
    make_problem,
    relative_error,
)


@dataclass
class Settings:
    method: str = "auto"  # JAX timing: auto | loop | calls
    target_s: float = 0.01  # length of one timed repeat (loop / events)
    budget_s: float = 0.2  # time all repeats of one peer on one case may take (>= 3 repeats)
    max_inner: int = 4096  # most products in one timed repeat
    seed: int = 0
    progress: bool = True
    log: bool = False  # one line per finished case on stderr
    time_limit_s: float | None = None  # no new case starts after this many seconds
    rounds: int = 3  # timing rounds that take turns over a case's peers
    block_size: int | None = None  # jaxcsb's block size (None: its default)


@dataclass(frozen=True)
class MatrixSpec:
    """A matrix not yet built: synthetic (kind, shape, sparsity) or a DLMC file."""

    kind: str
    shape: tuple[int, int] | None = None
    sparsity: float | None = None
    path: Path | None = None
    root: Path | None = None

    def load(self, seed):
        if self.path is not None:
            return load_dlmc(self.path, self.root, seed)
        return synthetic(self.kind, self.shape, self.sparsity, seed)


def _specs(group: Group, dlmc_dir) -> tuple[list[MatrixSpec], str | None]:
    specs = [
        MatrixSpec(kind, shape, sparsity)
        for kind in group.kinds
        for shape in group.shapes
        for sparsity in group.sparsities
    ]
    note = None
    if group.dlmc is not None:
        if dlmc_dir is None:
            note = f"group {group.name!r} skipped: no DLMC directory (give --dlmc DIR)"
        else:
            files = dlmc_files(dlmc_dir, group.dlmc)
            specs += [MatrixSpec("dlmc", path=f, root=Path(dlmc_dir)) for f in files]
            if not files:
                note = f"group {group.name!r}: no .smtx file under {dlmc_dir} matches {group.dlmc}"
    return specs, note


def _ns(spec: MatrixSpec, group: Group):
    if spec.path is None:
        return list(group.ns)
    return dlmc_ns(dlmc_per_image(spec.path, spec.root), group.ns, group.images)


def enumerate_cases(groups, dlmc_dir):
    """[(group, spec, n, dtype, product)] in run order, and notes on skipped groups."""
    cases, notes = [], []
    for group in groups:
        specs, note = _specs(group, dlmc_dir)
        if note:
            notes.append(note)
        for spec in specs:
            for dtype in group.dtypes:
                for n in _ns(spec, group):
                    for product in group.products:
                        cases.append((group, spec, n, dtype, product))
    return cases, notes


def _peer_order(names):
    return sorted(dict.fromkeys(names), key=lambda n: n != "jaxcsb")


def check_peer(peer, problem, memo, settings: Settings, cold_bytes: int):
    """Prepares one peer on one problem and checks its output against the reference.
    Returns its record and, when it passed, the timer to time it with (else None)."""
    reason = peer.unavailable()
    if reason:
        return {"status": "skipped", "reason": reason}, None
    try:
        prep = peer.prepare(problem, memo)
    except NotApplicable as e:
        return {"status": "n/a", "reason": str(e)}, None
    except Exception as e:  # a peer's failure is a result, not a crash of the sweep
        return {"status": "error", "reason": f"prepare: {type(e).__name__}: {e}"}, None
    rec = {"tolerance": TOLERANCE[prep.tolerance], "tolerance_of": prep.tolerance}
    if prep.block_size is not None:
        rec["block_size"] = prep.block_size
    try:
        timer = timing.Timer(prep, settings.method, timing.copies_for(cold_bytes, prep.bytes))
        err = relative_error(prep.to_numpy(timer.once()), problem.reference)
    except NotImplementedError as e:  # the library lacks this case (e.g. a dtype)
        return {"status": "n/a", "reason": f"{type(e).__name__}: {e}"}, None
    except Exception as e:
        return {**rec, "status": "error", "reason": f"run: {type(e).__name__}: {e}"}, None
    rec["rel_err"] = err
    if not err <= rec["tolerance"]:
        reason = f"relative error {err:.3g} > {rec['tolerance']}"
        return {**rec, "status": "fail", "reason": reason}, None
    return rec, (timer, prep)


def time_peers(checked: dict, problem, settings: Settings) -> None:
    """Times the checked peers (name -> (record, (timer, prep))) in ``settings.rounds``
    rounds that take turns over them, each round a share of every peer's budget, and fills
    their records: a change in the machine's load during a case then reaches every peer
    alike instead of whichever ran at the time. The single-call estimate is taken once and a
    JAX loop's trip count calibrated once (in the first round), so every round times the
    same repeat. The time is the median of the rounds' medians; min_ms the fastest repeat of
    all."""
    rounds = max(1, settings.rounds)
    estimates, timings = {}, {name: [] for name in checked}
    failed = set()  # peers whose timing raised: their records say why

    def fail(name, e):
        failed.add(name)
        checked[name][0].update(status="error", reason=f"timing: {type(e).__name__}: {e}")

    for name, (_, (timer, _)) in checked.items():
        try:
            estimates[name] = timer.estimate()
        except Exception as e:
            fail(name, e)
    for _ in range(rounds):
        for name in estimates:
            if name in failed:
                continue
            timer = checked[name][1][0]
            try:
                timings[name].append(
                    timer.measure(
                        estimates[name],
                        target_s=settings.target_s,
                        budget_s=settings.budget_s / rounds,
                        max_inner=settings.max_inner,
                    )
                )
            except Exception as e:
                fail(name, e)
    for name, (rec, (_, prep)) in checked.items():
        if name in failed or not timings[name]:
            continue
        ts, last = timings[name], timings[name][-1]
        seconds = statistics.median(t.ms for t in ts) * 1e-3
        rec.update(
            status="ok",
            ms=seconds * 1e3,
            min_ms=min(t.min_ms for t in ts),
            tflops=problem.useful_flops / seconds / 1e12,
            gbps=prep.bytes / seconds / 1e9,
            bytes=prep.bytes,
            method=last.method,
            reps=sum(t.reps for t in ts),
            rounds=len(ts),
            inner=last.inner,
            copies=last.copies,
            overhead_ms=statistics.median(t.overhead_ms for t in ts),
            spread=statistics.median(t.spread for t in ts),
            **({"fallback": last.fallback} if last.fallback else {}),
        )


def run_peer(peer, problem, memo, settings: Settings, cold_bytes: int) -> dict:
    """Check, then time one peer on one problem. Returns its record."""
    rec, timed = check_peer(peer, problem, memo, settings, cold_bytes)
    if timed is not None:
        time_peers({"peer": (rec, timed)}, problem, settings)
    return rec


def _case_record(group, m, problem, reference_kind):
    return {
        "group": group.name,
        "matrix": m.name,
        "kind": m.kind,
        "shape": list(m.shape),
        "nnz": m.nnz,
        "sparsity": m.sparsity,
        "n": problem.n,
        "dtype": problem.dtype.name,
        "product": problem.product,
        "useful_flops": problem.useful_flops,
        "reference": reference_kind,
        "peers": {},
    }


def _speedups(rec):
    mine = rec["peers"].get("jaxcsb", {})
    for name, peer in rec["peers"].items():
        if name != "jaxcsb" and peer.get("status") == "ok" and mine.get("status") == "ok":
            peer["speedup"] = peer["ms"] / mine["ms"]


def _transpose_ratios(records):
    """t_over_fwd on each transposed product's peers: its time over the forward product's
    time on the same matrix, N and dtype (by the peer's forward_peer for prebuilt copies)."""
    index = {(r["group"], r["matrix"], r["n"], r["dtype"], r["product"]): r for r in records}
    for r in records:
        fwd_product = TRANSPOSED_OF.get(r["product"])
        fwd = index.get((r["group"], r["matrix"], r["n"], r["dtype"], fwd_product))
        if fwd is None:
            continue
        for name, peer in r["peers"].items():
            fwd_name = PEERS[name].forward_peer or name
            base = fwd["peers"].get(fwd_name, {})
            if peer.get("status") == "ok" and base.get("status") == "ok":
                peer["t_over_fwd"] = peer["ms"] / base["ms"]
        if "t_over_fwd" in r["peers"].get("jaxcsb", {}):
            r["t_over_fwd"] = r["peers"]["jaxcsb"]["t_over_fwd"]


def _log_line(rec, elapsed) -> str:
    cells = []
    for name, peer in rec["peers"].items():
        if peer.get("status") == "ok":
            cells.append(f"{name}={peer['ms']:.4g}ms")
        else:
            cells.append(f"{name}:{peer.get('status')}")
    return (
        f"[{elapsed:7.1f}s] {rec['group']} {rec['matrix']} N={rec['n']} {rec['dtype']} "
        f"{rec['product']}: " + " ".join(cells)
    )


def run_sweep(groups, settings: Settings, dlmc_dir=None, peer_filter=None):
    """Runs every case; returns (records, notes)."""
    cases, notes = enumerate_cases(groups, dlmc_dir)
    records = []
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), unit="case", dynamic_ncols=True, leave=False)
    # jaxcsb at the sweep's block size; the other peers as registered.
    peers = {**PEERS, "jaxcsb": JaxCSB(settings.block_size)}
    current, m, memo = None, None, {}
    start = time.perf_counter()
    try:
        for i, (group, spec, n, dtype, product) in enumerate(cases):
            elapsed = time.perf_counter() - start
            if settings.time_limit_s is not None and elapsed > settings.time_limit_s:
                notes.append(
                    f"time limit {settings.time_limit_s:g} s reached: {len(cases) - i} of "
                    f"{len(cases)} cases not run"
                )
                break
            if spec != current:
                memo.clear()
                gc.collect()
                current, m = spec, spec.load(settings.seed)
            if bar is not None:
                bar.set_description(f"{m.name} N={n} {dtype} {product}"[-60:])
            problem = make_problem(m, n, DTYPES[dtype], product, seed=settings.seed + 1)
            rec = _case_record(group, m, problem, attach_reference(problem))
            names = [p for p in group.peers if peer_filter is None or p in peer_filter]
            checked = {}
            for name in _peer_order(names):
                peer_rec, timed = check_peer(peers[name], problem, memo, settings, group.cold_bytes)
                rec["peers"][name] = peer_rec
                if timed is not None:
                    checked[name] = (peer_rec, timed)
            time_peers(checked, problem, settings)
            _speedups(rec)
            records.append(rec)
            del problem
            if settings.log:
                print(_log_line(rec, time.perf_counter() - start), file=sys.stderr, flush=True)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    _transpose_ratios(records)
    return records, notes
