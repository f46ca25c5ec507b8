"""Static descriptions of one product call, shared by the native and the pure-JAX paths."""

from __future__ import annotations

from typing import NamedTuple


class Spmm(NamedTuple):
    """out = op(S) @ D, with S the stored (rows, cols) matrix and op the identity or the
    transpose. D and out are (features, n), or (n, features) when ``batch_leading`` (the
    ``x @ W`` case: the activations are read in the layout they have)."""

    stored_shape: tuple[int, int]
    block_size: int
    transpose: bool
    batch_leading: bool
    impl: str

    @property
    def out_dim(self) -> int:
        return self.stored_shape[1] if self.transpose else self.stored_shape[0]

    @property
    def in_dim(self) -> int:
        return self.stored_shape[0] if self.transpose else self.stored_shape[1]

    def out_shape(self, n: int) -> tuple[int, int]:
        return (n, self.out_dim) if self.batch_leading else (self.out_dim, n)

    def flipped(self) -> Spmm:
        """The product with op(S) transposed: the gradient of the dense operand."""
        return self._replace(transpose=not self.transpose)


class Sddmm(NamedTuple):
    """out[e] = sum_n L[i_e, n] * R[n, j_e] at the stored nonzeros (i_e, j_e) of S, with L
    given as (rows, n) or, when ``lhs_transposed``, (n, rows), and R given as (n, cols) or,
    when ``rhs_transposed``, (cols, n)."""

    stored_shape: tuple[int, int]
    block_size: int
    lhs_transposed: bool
    rhs_transposed: bool
    impl: str
