"""The benchmark's sparse matrices: synthetic patterns and the DLMC ``.smtx`` sample.

Every matrix is kept as sorted, duplicate-free COO triplets (row-major order) with float32
values, so each peer builds its own format from the same numbers and every product has one
canonical output order (SDDMM values in row-major order of the nonzeros).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._smtx import read_smtx

SYNTHETIC_KINDS = ("uniform", "magnitude", "skewed")


@dataclass(frozen=True, eq=False)
class Matrix:
    """A sparse (rows, cols) matrix as row-major sorted COO with float32 values."""

    name: str
    kind: str  # uniform | magnitude | skewed | dlmc
    shape: tuple[int, int]
    row: np.ndarray = field(repr=False)
    col: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)
    model: str | None = None  # DLMC: "transformer" or "rn50"
    per_image_n: int | None = None  # DLMC ResNet-50: the product's N for one image

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / max(1, self.shape[0] * self.shape[1])

    def dense(self, dtype=np.float64, values=None) -> np.ndarray:
        """The dense matrix with zeros off the pattern (``values`` overrides the stored ones)."""
        out = np.zeros(self.shape, dtype)
        out[self.row, self.col] = self.values if values is None else values
        return out


def _from_mask_values(name, kind, keep, w) -> Matrix:
    row, col = np.nonzero(keep)  # row-major order
    return Matrix(name, kind, keep.shape, row, col, w[row, col].astype(np.float32))


def _nnz_for(shape, sparsity) -> int:
    return int(round((1.0 - sparsity) * shape[0] * shape[1]))


def uniform(shape, sparsity, seed=0) -> Matrix:
    """Each entry kept independently with probability 1 - sparsity; standard-normal values."""
    rng = np.random.default_rng(seed)
    keep = rng.random(shape, dtype=np.float32) >= sparsity
    w = rng.standard_normal(shape, dtype=np.float32)
    return _from_mask_values(_synthetic_name("uniform", shape, sparsity), "uniform", keep, w)


def magnitude(shape, sparsity, seed=0) -> Matrix:
    """Magnitude pruning of a Gaussian whose rows and columns have log-normal scales (trained
    layers have uneven fan-in and fan-out): the largest |w| survive, so nonzeros per row and
    per column vary the way they do in pruned networks, unlike the uniform pattern."""
    rng = np.random.default_rng(seed)
    scale_r = np.exp(0.5 * rng.standard_normal((shape[0], 1))).astype(np.float32)
    scale_c = np.exp(0.5 * rng.standard_normal((1, shape[1]))).astype(np.float32)
    w = rng.standard_normal(shape, dtype=np.float32) * scale_r * scale_c
    nnz = _nnz_for(shape, sparsity)
    keep = np.zeros(shape, bool)
    if nnz:
        flat = np.argpartition(np.abs(w).reshape(-1), w.size - nnz)[w.size - nnz :]
        keep.reshape(-1)[flat] = True
    return _from_mask_values(_synthetic_name("magnitude", shape, sparsity), "magnitude", keep, w)


def skewed(shape, sparsity, seed=0) -> Matrix:
    """A few dense rows and many nearly empty ones: 1/64 of the rows (at least one) hold half
    of the nonzeros (as dense as that allows), the rest are spread uniformly over the others.
    The load-balancing stress case."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    nnz = _nnz_for(shape, sparsity)
    heavy = rng.choice(rows, size=max(1, rows // 64), replace=False)
    heavy_density = min(1.0, 0.5 * nnz / max(1, heavy.size * cols))
    light_rows = rows - heavy.size
    light_nnz = max(0, nnz - int(heavy_density * heavy.size * cols))
    light_density = min(1.0, light_nnz / max(1, light_rows * cols))
    p = np.full((rows, 1), light_density, np.float32)
    p[heavy] = heavy_density
    keep = rng.random(shape, dtype=np.float32) < p
    w = rng.standard_normal(shape, dtype=np.float32)
    return _from_mask_values(_synthetic_name("skewed", shape, sparsity), "skewed", keep, w)


_GENERATORS = {"uniform": uniform, "magnitude": magnitude, "skewed": skewed}


def _synthetic_name(kind, shape, sparsity) -> str:
    return f"{kind}-{shape[0]}x{shape[1]}-{sparsity:g}"


def synthetic(kind, shape, sparsity, seed=0) -> Matrix:
    if kind not in _GENERATORS:
        raise ValueError(f"matrix kind must be one of {SYNTHETIC_KINDS}, got {kind!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return _GENERATORS[kind](tuple(int(d) for d in shape), float(sparsity), seed)


# --- DLMC ------------------------------------------------------------------------------------


def dlmc_files(directory, contains=()) -> list[Path]:
    """All ``.smtx`` files under ``directory`` (recursive, sorted), keeping those whose path
    relative to ``directory`` contains every string in ``contains``."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"DLMC directory {os.fspath(root)!r} does not exist")
    files = sorted(root.rglob("*.smtx"))
    rel = [f.relative_to(root).as_posix() for f in files]
    return [f for f, r in zip(files, rel, strict=True) if all(c in r for c in contains)]


def _rn50_batchsizes(path: Path, root: Path) -> dict[str, int]:
    """rn50_batchsizes.txt (layer name -> N for one image), searched from the file's folder up
    to the DLMC root."""
    for folder in [path.parent, *path.parent.parents]:
        table = folder / "rn50_batchsizes.txt"
        if table.is_file():
            out = {}
            for line in table.read_text().splitlines():
                name, _, n = line.partition(",")
                if n.strip():
                    out[name.strip()] = int(n)
            return out
        if folder == root or folder == folder.parent:
            break
    return {}


def dlmc_model(path, root) -> str | None:
    """ "rn50" or "transformer" from the file's path under the DLMC root (None if neither)."""
    rel = Path(path).relative_to(root).as_posix()
    return "rn50" if "rn50" in rel else "transformer" if "transformer" in rel else None


def dlmc_per_image(path, root) -> int | None:
    """A ResNet-50 layer's N for one image (rn50_batchsizes.txt); None for other models."""
    if dlmc_model(path, root) != "rn50":
        return None
    return _rn50_batchsizes(Path(path), Path(root)).get(Path(path).stem)


def load_dlmc(path, root, seed=0) -> Matrix:
    """One ``.smtx`` file with standard-normal values drawn from ``seed`` (as
    :func:`jaxcsb.load_smtx` draws them)."""
    path, root = Path(path), Path(root)
    shape, indptr, indices = read_smtx(path)
    row = np.repeat(np.arange(shape[0]), np.diff(indptr))
    values = np.random.default_rng(seed).standard_normal(indices.size).astype(np.float32)
    order = np.lexsort((indices, row))  # .smtx rows are sorted; columns need not be
    return Matrix(
        f"dlmc:{path.relative_to(root).with_suffix('').as_posix()}",
        "dlmc",
        shape,
        row[order],
        indices[order],
        values[order],
        model=dlmc_model(path, root),
        per_image_n=dlmc_per_image(path, root),
    )


def dlmc_ns(per_image_n, ns, images) -> list[int]:
    """The N to run a DLMC matrix with: a ResNet-50 layer (``per_image_n`` known) uses
    per-image N x each image count; every other matrix uses ``ns``."""
    if per_image_n is not None:
        return sorted({per_image_n * int(i) for i in images})
    return list(ns)


def parse_shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a shape must look like 4096x1024, got {text!r}") from None
    if rows <= 0 or cols <= 0:
        raise ValueError(f"a shape must have positive dimensions, got {text!r}")
    return rows, cols
