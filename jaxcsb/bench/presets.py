"""Sweeps: a :class:`Group` is one cross product of matrices, N, dtypes, products and peers;
a preset is a list of groups (plus its targets, in ``targets.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from .products import PRODUCTS

ALL_PEERS = (
    "jaxcsb",
    "xla_dense",
    "xla_dense_highest",
    "xla_dense_bf16",
    "bcsr",
    "bcoo",
    "torch_csr",
    "torch_csr_tprebuilt",
    "scipy",
)


@dataclass(frozen=True)
class Group:
    name: str
    kinds: tuple[str, ...] = ()  # synthetic kinds (uniform, magnitude, skewed)
    shapes: tuple[tuple[int, int], ...] = ()
    sparsities: tuple[float, ...] = ()
    dlmc: tuple[str, ...] | None = None  # DLMC files whose path contains all of these; None: no
    ns: tuple[int, ...] = (256,)  # N for synthetic and Transformer matrices
    images: tuple[int, ...] = (32,)  # DLMC ResNet-50: N = per-image N x images
    dtypes: tuple[str, ...] = ("float32",)
    products: tuple[str, ...] = PRODUCTS
    peers: tuple[str, ...] = ALL_PEERS
    cold_bytes: int = 0  # rotate copies of the stored matrix until a pass moves this much


_TRANSPOSE_PAIR = ("spmm", "spmm_t")
_CPU_PEERS = ("jaxcsb", "xla_dense", "bcsr", "bcoo", "scipy")

PRESETS: dict[str, tuple[Group, ...]] = {
    # A few seconds on a CPU: every product, dtype path and peer once (used by the tests).
    "tiny": (
        Group("tiny", ("uniform",), ((96, 80),), (0.9,), ns=(8,), peers=_CPU_PEERS),
        Group(
            "tiny-bf16",
            ("skewed",),
            ((64, 100),),
            (0.8,),
            ns=(5,),
            dtypes=("bfloat16",),
            products=("spmm", "xw", "sddmm"),
            peers=("jaxcsb", "xla_dense", "bcoo"),
        ),
    ),
    # About a minute on two CPU cores.
    "cpu-small": (
        # The CPU check: 2048x512 weights at 90%, N=256, float32: A @ B against BCSR (>= 2x)
        # and the transposed products against the forward ones (<= 1.3x).
        Group("cpu-check", ("uniform",), ((2048, 512),), (0.9,), ns=(256,), peers=_CPU_PEERS),
        Group(
            "cpu-sparsity",
            ("uniform", "magnitude", "skewed"),
            ((1024, 512),),
            (0.7, 0.9, 0.98),
            ns=(64,),
            products=_TRANSPOSE_PAIR,
            peers=("jaxcsb", "xla_dense", "bcsr", "scipy"),
        ),
        Group(
            "cpu-bf16",
            ("uniform",),
            ((1024, 512),),
            (0.9,),
            ns=(64,),
            dtypes=("bfloat16",),
            products=("spmm", "spmm_t", "xw_t", "sddmm"),
            peers=("jaxcsb", "xla_dense", "bcoo"),
        ),
        Group(
            "cpu-dlmc",
            dlmc=("transformer/magnitude_pruning/0.9/",),
            ns=(256,),
            products=_TRANSPOSE_PAIR,
            peers=("jaxcsb", "bcsr", "scipy"),
        ),
    ),
    # The project's targets on one H100 (targets.py). With the 42-matrix DLMC sample: 218
    # cases, 168 of them DLMC (docs/benchmarks.md gives the expected run time).
    "gpu-targets": (
        # Both layouts with their transposes: the transposed / forward time ratios of A.T @ B
        # and X @ A are targets; cuSPARSE's prebuilt A.T copy applies to A.T @ B only (n/a for
        # the others).
        Group(
            "dlmc",
            dlmc=(),
            ns=(2048,),
            images=(32,),
            products=("spmm", "spmm_t", "xw_t", "xw"),
            peers=("jaxcsb", "torch_csr", "torch_csr_tprebuilt"),
        ),
        Group(
            "sparsity",
            ("uniform",),
            ((4096, 1024), (1024, 4096)),
            (0.7, 0.8, 0.9, 0.95, 0.98),
            ns=(4096,),
            products=_TRANSPOSE_PAIR,
            peers=("jaxcsb", "xla_dense", "xla_dense_highest", "torch_csr", "torch_csr_tprebuilt"),
        ),
        Group(
            "headline",
            ("uniform",),
            ((4096, 1024),),
            (0.9,),
            ns=(4096,),
            products=("spmm", "spmm_t", "xw_t", "xw"),
            peers=ALL_PEERS,
        ),
        Group(
            "sddmm",
            ("uniform",),
            ((4096, 1024),),
            (0.9,),
            ns=(4096,),
            dtypes=("float32", "bfloat16"),
            products=("sddmm",),
            peers=("jaxcsb", "xla_dense", "xla_dense_highest", "bcoo", "torch_csr"),
        ),
        Group(
            "small-n",
            ("uniform",),
            ((4096, 4096), (11008, 4096)),
            (0.8, 0.9),
            ns=(1, 16, 64),
            dtypes=("bfloat16",),
            products=("spmm", "xw_t"),
            peers=("jaxcsb", "xla_dense", "torch_csr"),
            cold_bytes=256 * 2**20,
        ),
    ),
}


def check_preset(name: str) -> tuple[Group, ...]:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    return PRESETS[name]
