"""Stride-1 convolutions by Winograd's minimal filtering (Lavin and Gray 2016, "Fast algorithms for
convolutional neural networks", after Winograd 1980 and Toom-Cook): fewer multiplications than
the direct convolution, the same values up to float rounding.

``F(m x m, r x r)`` computes each ``m x m`` tile of the output of an ``r x r`` kernel from an ``n x
n`` tile of the input (``n = m + r - 1``)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise, per input and output channel)

so one output tile costs ``n^2`` products per channel pair instead of ``m^2 r^2``: with ``m = 2``,
16 instead of 36 for a 3x3 kernel (2.25x fewer) and 36 instead of 100 for a 5x5 kernel. Over a
batch the ``n^2`` elementwise products become ``n^2`` matrix products ``(tiles, C_in) x (C_in,
C_out)``, and the transforms ``B^T d B`` and ``A^T M A`` are sums of shifted slices that XLA fuses.

The matrices come from the Toom-Cook construction with the interpolation points ``0, 1, -1, 2,
-2, ...`` and infinity: ``A`` and ``G`` evaluate polynomials of degree ``m - 1`` and ``r - 1`` at
the points, ``B^T`` is the transpose of the inverse of the degree-``n - 1`` evaluation matrix
(the correlation is the transpose of the polynomial product). Only ``m = 2`` is used
(:data:`TILE`): on a 2-core CPU larger tiles were slower at the shapes of the convolutional nets,
their transforms costing more than the products they save (BENCHMARKS.md, "Convolutional EP
against PyTorch").

Layouts as in :mod:`eqjax.models.conv_ops`: maps NHWC ``(B, H, W, C)``, kernels HWIO ``(r, r,
C_in, C_out)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TILE = 2
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of ``F(m, r)`` in float64: ``(m, n)``, ``(n, r)``, ``(n, n)`` with ``n = m + r
    - 1`` (at most 10)."""
    n = m + r - 1
    if not (m >= 1 and r >= 1 and n - 1 <= len(_POINTS)):
        raise ValueError(f"F({m}, {r}) needs {n - 1} interpolation points; at most {len(_POINTS)} are defined")
    points = np.array(_POINTS[: n - 1])

    def evaluation(degree):  # rows: the points, then infinity (the leading coefficient)
        rows = points[:, None] ** np.arange(degree)[None, :]
        return np.vstack([rows, np.eye(degree)[-1]])

    return evaluation(m).T, evaluation(r), np.linalg.inv(evaluation(n)).T


def _combine(coefficients, terms):
    """``sum_i c_i terms[i]`` with the zero coefficients skipped and +-1 as additions."""
    total = None
    for c, term in zip(coefficients, terms):
        if c == 0:
            continue
        term = term if c == 1 else -term if c == -1 else float(c) * term
        total = term if total is None else total + term
    return jnp.zeros_like(terms[0]) if total is None else total


def _sandwich(left: np.ndarray, t: jax.Array, right: np.ndarray) -> jax.Array:
    """``left t right`` over the two leading axes of ``t`` ``(i, j, C_in, C_out)``, for every channel
    pair: ``(left.shape[0], right.shape[1], C_in, C_out)``. Written as sums of whole ``(C_in, C_out)``
    slices with the static coefficients: as a contraction XLA's CPU backend makes it a matrix product
    with 3 or 4 columns, more than ten times slower (BENCHMARKS.md, "Convolutional EP against
    PyTorch")."""
    rows = [_combine(left[a], list(t)) for a in range(left.shape[0])]
    return jnp.stack([jnp.stack([_combine(right[:, b], list(row)) for b in range(right.shape[1])]) for row in rows])


def kernel_transform(w: jax.Array, m: int = TILE) -> jax.Array:
    """``G w G^T`` for every channel pair of ``w`` ``(r, r, C_in, C_out)``: ``(n, n, C_in, C_out)``,
    what :func:`conv` takes. Linear in ``w``; compute it once per set of weights."""
    _, g, _ = matrices(m, w.shape[0])
    return _sandwich(g, w, g.T)


def _pad_or_crop(a, rows, columns):
    """Zero-pad the two spatial axes of ``a`` by ``rows = (top, bottom)`` and ``columns = (left,
    right)``; a negative amount crops."""
    (top, bottom), (left, right) = rows, columns
    a = a[:, max(-top, 0): a.shape[1] - max(-bottom, 0), max(-left, 0): a.shape[2] - max(-right, 0)]
    return jnp.pad(a, ((0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)))


def _input_tiles(a, kernel, padding, m):
    """``B^T d B`` for every ``n x n`` input tile of ``a`` (stride ``m``): ``(n^2, B * tiles, C_in)``,
    and the output's tile counts and size ``(tiles_h, tiles_w, out_h, out_w)``."""
    _, _, bt = matrices(m, kernel)
    n = m + kernel - 1
    _, height, width, channels = a.shape
    out_h, out_w = height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    a = _pad_or_crop(a, (padding, padding + m * tiles_h - out_h), (padding, padding + m * tiles_w - out_w))
    a = jax.lax.optimization_barrier(a)
    d = [[a[:, i: i + m * tiles_h: m, j: j + m * tiles_w: m] for j in range(n)] for i in range(n)]
    rows = [[_combine(bt[p], [d[i][j] for i in range(n)]) for j in range(n)] for p in range(n)]
    v = jnp.stack([_combine(bt[q], rows[p]) for p in range(n) for q in range(n)])
    return jax.lax.optimization_barrier(v.reshape(n * n, -1, channels)), (tiles_h, tiles_w, out_h, out_w)


def conv(a: jax.Array, u: jax.Array, kernel: int, padding: int, swap_channels: bool = False) -> jax.Array:
    """The stride-1 convolution of ``a`` ``(B, H, W, C_in)`` with an ``r x r`` kernel ``w`` (``kernel``
    = ``r``, static) and ``padding`` (static; a negative value crops) zeros on each side, from ``u
    = kernel_transform(w, m)``: ``(B, H + 2p - r + 1, W + 2p - r + 1, C_out)``, equal to
    :func:`eqjax.models.conv_ops.conv` up to float rounding. The tile size ``m`` is ``u``'s:
    ``u.shape[0] - r + 1``.

    With ``swap_channels=True`` (static) ``u`` is ``kernel_transform(v)`` of a kernel ``v`` ``(r, r,
    C_out, C_in)`` and the convolution is with ``v``'s channels swapped, ``v.transpose(0, 1, 3, 2)``:
    the products contract ``u``'s last axis, so the swapped kernel is never transposed in memory.
    That costs a few percent per product on a CPU; a transposed kernel costs more: XLA's CPU backend
    fuses the transpose into the transform's sums, which then read memory with a large stride."""
    n = u.shape[0]
    m = n - kernel + 1
    at, _, _ = matrices(m, kernel)
    batch = a.shape[0]
    v, (tiles_h, tiles_w, out_h, out_w) = _input_tiles(a, kernel, padding, m)
    u = u.reshape(n * n, *u.shape[2:]).astype(a.dtype)
    out_channels = u.shape[1] if swap_channels else u.shape[2]
    contracted = 2 if swap_channels else 1
    products = jax.lax.dot_general(v, u, (((2,), (contracted,)), ((0,), (0,))))
    products = products.reshape(n, n, batch, tiles_h, tiles_w, out_channels)
    rows = [[_combine(at[p], [products[i, j] for i in range(n)]) for j in range(n)] for p in range(m)]
    y = jnp.stack([jnp.stack([_combine(at[q], rows[p]) for q in range(m)], axis=3) for p in range(m)], axis=2)
    return jax.lax.optimization_barrier(y.reshape(batch, m * tiles_h, m * tiles_w, out_channels)[:, :out_h, :out_w])


def kernel_gradient(a: jax.Array, g: jax.Array, kernel: int, padding: int, m: int = TILE) -> jax.Array:
    """The cotangent of ``w`` in ``conv(a, w, padding)`` for the output cotangent ``g`` ``(B, H_out,
    W_out, C_out)``: ``(r, r, C_in, C_out)`` with ``r = kernel``, computed in Winograd's domain.
    With ``V = B^T d B`` the input tiles (as :func:`conv` makes them) and ``dM = A g A^T`` the
    output cotangent's ``m x m`` tiles expanded to ``n x n``, each tile element's cotangent is one
    matrix product ``dU = V^T dM`` (``(C_in, tiles) x (tiles, C_out)``) and ``dw = G^T dU G``.
    Equal to :func:`eqjax.models.conv_ops.weight_gradient` up to float rounding."""
    at, g_matrix, _ = matrices(m, kernel)
    n = m + kernel - 1
    v, (tiles_h, tiles_w, out_h, out_w) = _input_tiles(a, kernel, padding, m)
    g = jnp.pad(g, ((0, 0), (0, m * tiles_h - out_h), (0, m * tiles_w - out_w), (0, 0)))
    tiles = [[g[:, p::m, q::m] for q in range(m)] for p in range(m)]
    rows = [[_combine(at[:, i], [tiles[p][q] for p in range(m)]) for q in range(m)] for i in range(n)]
    dm = jnp.stack([_combine(at[:, j], rows[i]) for i in range(n) for j in range(n)])
    dm = dm.reshape(n * n, -1, g.shape[-1]).astype(v.dtype)
    du = jax.lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))))  # (n^2, C_in, C_out)
    du = du.reshape(n, n, *du.shape[1:])
    return _sandwich(g_matrix.T, du, g_matrix)
