"""Command line: ``python -m jaxcsb.bench [--preset NAME | sweep options] [outputs]``.

Examples::

    python -m jaxcsb.bench                                   # cpu-small / gpu-targets
    python -m jaxcsb.bench --preset gpu-targets --dlmc shared/dlmc
    python -m jaxcsb.bench --shapes 4096x1024,1024x4096 --sparsities 0.7,0.9,0.98 \\
        --n 256,4096 --dtypes float32,bfloat16 --products spmm,spmm_t
    python -m jaxcsb.bench --matrices dlmc --dlmc shared/dlmc --n 2048 --images 1,32
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import jax

import jaxcsb

from .._build import BLOCK_SIZES
from . import report
from .ceilings import measure_ceilings
from .matrices import SYNTHETIC_KINDS, parse_shape
from .peers import PEER_NAMES, PEERS, check_peer_name
from .presets import ALL_PEERS, PRESETS, Group, check_preset
from .products import DTYPES, PRODUCTS, check_product
from .runner import Settings, run_sweep
from .targets import TARGETS, evaluate

ENV_RECORDED = ("XLA_FLAGS", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_ENABLE_X64")
SWEEP_OPTIONS = ("matrices", "shapes", "sparsities", "n", "images", "dtypes", "products")


def _list(kind, check=None):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(check(kind(t)) if check else kind(t) for t in items)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _check_in(choices, what):
    def check(x):
        if x not in choices:
            raise ValueError(f"{what} must be one of {tuple(choices)}, got {x!r}")
        return x

    return check


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jaxcsb-bench",
        description=(
            "Benchmark jaxcsb's products against XLA dense, jax.experimental.sparse, "
            "cuSPARSE (torch) and scipy.sparse, correctness-checked before timing."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    sweep = ap.add_argument_group("what to run (a preset, or sweep options for a custom sweep)")
    sweep.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="default: cpu-small on a CPU backend, gpu-targets on an accelerator",
    )
    kinds = (*SYNTHETIC_KINDS, "dlmc")
    sweep.add_argument(
        "--matrices",
        type=_list(str, _check_in(kinds, "a matrix kind")),
        help=f"matrix kinds, comma-separated, from {kinds} (default uniform)",
    )
    sweep.add_argument("--shapes", type=_list(parse_shape), help="e.g. 4096x1024,1024x4096")
    sweep.add_argument("--sparsities", type=_list(float), help="e.g. 0.7,0.9,0.98 (default 0.9)")
    sweep.add_argument("--n", type=_list(int), help="N of the dense operands (default 256)")
    sweep.add_argument(
        "--images",
        type=_list(int),
        help="DLMC ResNet-50: N = per-image N (rn50_batchsizes.txt) x images (default 32)",
    )
    sweep.add_argument(
        "--dtypes",
        type=_list(str, _check_in(DTYPES, "a dtype")),
        help="float32, bfloat16, float16 (default float32)",
    )
    sweep.add_argument(
        "--products", type=_list(str, check_product), help=f"from {PRODUCTS} (default all)"
    )
    sweep.add_argument("--peers", type=_list(str, check_peer_name), help=f"from {PEER_NAMES}")
    sweep.add_argument(
        "--dlmc",
        help="DLMC directory, searched recursively for .smtx files (default: $JAXCSB_DLMC, "
        "else shared/dlmc or ../shared/dlmc if present)",
    )
    sweep.add_argument(
        "--dlmc-filter",
        type=_list(str),
        default=(),
        help="keep DLMC files whose path contains all of these strings (in a preset too)",
    )
    sweep.add_argument(
        "--block-size",
        type=int,
        choices=BLOCK_SIZES,
        help="jaxcsb's block size, in a preset too (default: jaxcsb's default for the "
        "matrix's density, the dtype and the platform)",
    )
    out = ap.add_argument_group("outputs")
    out.add_argument("--out", help="output directory (default results/)")
    out.add_argument("--json", help="JSON path (default <out>/bench-<platform>.json)")
    out.add_argument("--plot", help="PNG path (default: the JSON path with .png)")
    out.add_argument("--no-plot", action="store_true", help="write no PNG")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--log", action="store_true", help="one line per finished case (stderr)")
    how = ap.add_argument_group("timing")
    how.add_argument("--timing", choices=("auto", "loop", "calls"), default="auto")
    how.add_argument(
        "--budget", type=float, default=None, help="seconds of repeats per peer and case"
    )
    how.add_argument("--target", type=float, default=None, help="seconds per timed repeat")
    how.add_argument("--max-inner", type=int, default=4096, help="most products per repeat")
    how.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timing rounds per case, taking turns over its peers (the budget is shared)",
    )
    how.add_argument(
        "--ceilings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure copy bandwidth and GEMM ceilings (default: on, except the tiny preset)",
    )
    how.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds after which no new case starts (the rest are listed as not run)",
    )
    how.add_argument("--seed", type=int, default=0)
    return ap


def _default_dlmc():
    env = os.environ.get("JAXCSB_DLMC")
    if env:
        return env
    for candidate in ("shared/dlmc", "../shared/dlmc"):
        if Path(candidate).is_dir():
            return candidate
    return None


def _custom_group(args) -> Group:
    kinds = args.matrices or ("uniform",)
    synthetic = tuple(k for k in kinds if k != "dlmc")
    return Group(
        "custom",
        synthetic,
        args.shapes or ((4096, 1024),),
        args.sparsities or (0.9,),
        dlmc=tuple(args.dlmc_filter) if "dlmc" in kinds else None,
        ns=args.n or (256,),
        images=args.images or (32,),
        dtypes=args.dtypes or ("float32",),
        products=args.products or PRODUCTS,
        peers=ALL_PEERS,
    )


def narrow_dlmc(groups, filters):
    """The groups with ``filters`` added to every DLMC group's path filter; the other groups
    as they are."""
    if not filters:
        return tuple(groups)
    return tuple(g if g.dlmc is None else replace(g, dlmc=(*g.dlmc, *filters)) for g in groups)


def _meta(args, preset, settings, notes):
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if args is None else list(args),
        "preset": preset,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxcsb": jaxcsb.__version__,
        "jaxcsb_native": sorted(jaxcsb.native_platforms()),
        "torch": torch_version,
        "timing": vars(settings),
        "env": {k: os.environ[k] for k in ENV_RECORDED if k in os.environ},
        "peers": {
            name: {"label": p.label, "unavailable": p.unavailable()} for name, p in PEERS.items()
        },
        "notes": notes,
    }


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    if backend == "gpu" and "cuda" not in jaxcsb.native_platforms():
        parser.error(
            "jax runs on a GPU but jaxcsb's CUDA kernels are not available, so every jaxcsb "
            "time would be the pure-JAX fallback's: install jaxcsb with CUDA (README) and run "
            "the installed jaxcsb-bench (`python -m jaxcsb.bench` in a source checkout "
            "imports the checkout, which holds no built kernels)"
        )
    custom = any(getattr(args, opt) is not None for opt in SWEEP_OPTIONS)
    if custom and args.preset:
        parser.error(f"give either --preset or sweep options ({', '.join(SWEEP_OPTIONS)})")
    if custom:
        preset, groups = None, (_custom_group(args),)
    else:
        preset = args.preset or ("cpu-small" if backend == "cpu" else "gpu-targets")
        groups = check_preset(preset)
        groups = narrow_dlmc(groups, args.dlmc_filter)
    dlmc_dir = args.dlmc or _default_dlmc()
    if args.dlmc and not Path(args.dlmc).is_dir():
        parser.error(f"--dlmc {args.dlmc!r} is not a directory")
    if custom and "dlmc" in (args.matrices or ()) and dlmc_dir is None:
        parser.error("--matrices dlmc needs --dlmc DIR")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")

    on_cpu = backend == "cpu"
    settings = Settings(
        method=args.timing,
        target_s=args.target if args.target is not None else (0.02 if on_cpu else 0.01),
        budget_s=args.budget if args.budget is not None else (0.25 if on_cpu else 0.1),
        max_inner=args.max_inner,
        seed=args.seed,
        progress=not args.no_progress,
        log=args.log,
        time_limit_s=args.time_limit,
        rounds=args.rounds,
        block_size=args.block_size,
    )
    if preset == "tiny" and args.budget is None:
        settings.budget_s = 0.005

    want_ceilings = args.ceilings if args.ceilings is not None else preset != "tiny"
    ceilings = measure_ceilings(settings.method) if want_ceilings else None
    records, notes = run_sweep(groups, settings, dlmc_dir, set(args.peers or PEER_NAMES))
    target_results = evaluate(TARGETS.get(preset, ()), records, ceilings)

    out_dir = Path(args.out or "results")
    json_path = Path(args.json) if args.json else out_dir / f"bench-{backend}.json"
    meta = _meta(argv, preset, settings, notes)
    meta["dlmc"] = dlmc_dir
    payload = {
        "meta": meta,
        "ceilings": ceilings,
        "targets": target_results,
        "results": records,
    }
    report.write_json(json_path, payload)
    written = [str(json_path)]
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else json_path.with_suffix(".png")
        title = f"jaxcsb {preset or 'custom'} on {meta['device']} ({backend})"
        if report.plot(records, plot_path, title):
            written.append(str(plot_path))

    for note in notes:
        print(f"note: {note}")
    if ceilings:
        print(report.ceilings_text(ceilings))
    print(f"wrote {', '.join(written)}")
    if target_results:
        print(report.targets_text(target_results))
    print(report.table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
