"""The array operations of the convolutional energies (:mod:`eqjax.models.conv`), written so that
every pass of a relaxation sweep is an ordinary forward convolution.

Layouts: maps are NHWC ``(B, H, W, C)``, kernels HWIO ``(k, k, C_in, C_out)``; convolutions have
stride 1 and ``padding`` zeros on each side.

Why these exist: XLA's CPU backend runs JAX's own transposes of a convolution (with respect to its
input or its kernel, as reverse-mode autodiff emits them) several times slower inside a loop than
the same arithmetic written as a forward convolution (BENCHMARKS.md, "Convolutional EP against
PyTorch"); and every relaxation step and training step runs inside a loop. So

- :func:`input_gradient` is the transpose with respect to the input as a convolution with the
  kernel flipped and its channels swapped (:func:`feedback_kernel`, prepared once per batch);
- :func:`weight_gradient` is the transpose with respect to the kernel as a convolution with the
  examples as its features;
- :func:`pooled_coupling`, the energy's interaction ``s_k . P(W * s_{k-1})``, has its own
  forward-mode rule (``jax.custom_jvp``): its derivative with respect to the lower map is the
  feedback field ``input_gradient(unpool(s_k), W)``, computed as a value, so the reverse-mode
  gradient of an energy (what every solver takes) multiplies it by the cotangent instead of
  transposing a convolution. Forward mode, higher derivatives and ``vmap`` work as for any JAX
  function; :func:`conv_for_parameter_gradients` does the same for reverse-mode parameter
  gradients.

The relaxation's two convolutions per pair of layers (the forward one and the feedback one) each
run as XLA's convolution (``"direct"``), by Winograd's algorithm (``"winograd"``,
:mod:`eqjax.models.winograd`: 2.25x fewer products for 3x3 kernels) or from the input's side
(``"scatter"``, :func:`scatter_conv`: no products with padding zeros); :func:`pass_method`
chooses, and :func:`prepare_kernel` and :func:`prepare_feedback` transform a kernel once per batch
for the chosen method.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from eqjax.models import winograd

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
METHODS = ("auto", "direct", "winograd", "scatter")
WINOGRAD_KERNELS = (3, 5)


def conv(a: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """Stride-1 convolution of a batch of maps ``a`` ``(B, H, W, C_in)`` with ``w`` ``(k, k, C_in,
    C_out)`` and ``padding`` (static) zeros on each side: ``(B, H + 2p - k + 1, W + 2p - k + 1,
    C_out)``. A cross-correlation, as in every deep learning library."""
    return jax.lax.conv_general_dilated(a, w.astype(a.dtype), (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=_DIMENSIONS)


def feedback_kernel(w: jax.Array) -> jax.Array:
    """``w`` ``(k, k, C_in, C_out)`` flipped in space with its channels swapped, ``(k, k, C_out,
    C_in)``: the kernel of :func:`input_gradient`. Linear in ``w``."""
    return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def input_gradient(g: jax.Array, w_flipped: jax.Array, padding: int) -> jax.Array:
    """The transpose of ``a -> conv(a, w, padding)`` applied to ``g`` ``(B, H_out, W_out, C_out)``:
    ``(B, H, W, C_in)``, as the forward convolution ``conv(g, feedback_kernel(w), k - 1 - padding)``
    (a negative padding crops). ``w_flipped`` is :func:`feedback_kernel` of ``w``."""
    return conv(g, w_flipped, w_flipped.shape[0] - 1 - padding)


def scatter_conv(a: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """``conv(a, w, padding)`` written from the input's side: every input
    position's products with all ``k x k`` kernel taps as one matrix product ``(B H W, C_in) x
    (C_in, k k C_out)``, then the taps added into place (shifted slices that XLA fuses). Its work
    grows with the input's size, the direct convolution's with the output's: cheaper when the
    padding makes the output larger than the input (``2 padding > k - 1``), as in the feedback pass
    of a layer without padding, which multiplies ``k - 1`` rings of zeros otherwise."""
    k, _, c_in, c_out = w.shape
    batch, height, width, _ = a.shape
    # (positions, taps x C_out), row-major as the product leaves it: with the taps first XLA
    # transposed the product's result in every pass, about as costly as the product itself
    taps = a.reshape(-1, c_in) @ w.transpose(2, 0, 1, 3).reshape(c_in, k * k * c_out).astype(a.dtype)
    taps = taps.reshape(batch, height, width, k, k, c_out)
    rows = [sum(jnp.pad(taps[:, :, :, i, j], ((0, 0), (0, 0), (k - 1 - j, j), (0, 0))) for j in range(k))
            for i in range(k)]
    full = sum(jnp.pad(row, ((0, 0), (k - 1 - i, i), (0, 0), (0, 0))) for i, row in enumerate(rows))
    crop = k - 1 - padding
    if crop < 0:
        full, crop = jnp.pad(full, ((0, 0), (-crop, -crop), (-crop, -crop), (0, 0))), 0
    return full[:, crop: crop + height + 2 * padding - k + 1, crop: crop + width + 2 * padding - k + 1]


def pass_method(method: str, kernel: int, padding: int) -> str:
    """How one convolution pass of the relaxation runs (``"direct"``, ``"winograd"`` or
    ``"scatter"``) for a ``kernel x kernel`` kernel and ``padding`` (that of the pass: ``k - 1 - p``
    for a feedback pass). ``method`` is the model's ``conv_method``: ``"direct"``, ``"winograd"``
    and ``"scatter"`` are taken as they are; ``"auto"`` is ``"direct"`` off a CPU (on a GPU cuDNN
    picks its own algorithm) and on a CPU :func:`scatter_conv` when the output is larger than the
    input (``2 padding > k - 1``), Winograd for the kernels of :data:`WINOGRAD_KERNELS`, direct
    otherwise: the fastest of the three at the shapes measured (BENCHMARKS.md). Static: called
    while tracing."""
    if method not in METHODS:
        raise ValueError(f"conv method must be one of {METHODS}, got {method!r}")
    if method != "auto" or jax.default_backend() != "cpu":
        return "direct" if method == "auto" else method
    if 2 * padding > kernel - 1:
        return "scatter"
    return "winograd" if kernel in WINOGRAD_KERNELS else "direct"


def prepare_kernel(w: jax.Array, method: str) -> jax.Array:
    """``w`` ``(k, k, C_in, C_out)`` as :func:`apply_kernel` takes it for ``method`` (``"direct"``
    and ``"scatter"``: unchanged; ``"winograd"``: :func:`eqjax.models.winograd.kernel_transform`,
    ``(k + 1, k + 1, C_in, C_out)``). Linear in ``w``."""
    return winograd.kernel_transform(w) if method == "winograd" else w


def apply_kernel(a: jax.Array, prepared: jax.Array, kernel: int, padding: int, method: str) -> jax.Array:
    """``conv(a, w, padding)`` from ``prepared = prepare_kernel(w, method)``; ``kernel``, ``padding``
    (a negative value crops) and ``method`` are static."""
    if method == "winograd":
        return winograd.conv(a, prepared, kernel, padding)
    if method == "scatter":
        return scatter_conv(a, prepared, padding)
    return conv(a, prepared, padding)


def prepare_feedback(w: jax.Array, method: str) -> jax.Array:
    """The feedback pass's kernel, :func:`feedback_kernel` of ``w`` ``(k, k, C_in, C_out)``, as
    :func:`apply_feedback` takes it for ``method``: ``prepare_kernel(feedback_kernel(w), method)``,
    except for ``"winograd"``: the transform of ``w`` flipped in space with its channels left in place
    (``(k + 1, k + 1, C_in, C_out)``; see ``swap_channels`` in :func:`eqjax.models.winograd.conv`).
    Linear in ``w``."""
    if method == "winograd":
        return winograd.kernel_transform(jnp.flip(w, (0, 1)))
    return prepare_kernel(feedback_kernel(w), method)


def apply_feedback(g: jax.Array, prepared: jax.Array, kernel: int, padding: int, method: str) -> jax.Array:
    """``input_gradient(g, feedback_kernel(w), padding)`` (the transpose of ``a -> conv(a, w,
    padding)`` applied to ``g`` ``(B, H_out, W_out, C_out)``) from ``prepared = prepare_feedback(w,
    method)``; ``kernel``, ``padding`` (the forward pass's) and ``method`` are static."""
    if method == "winograd":
        return winograd.conv(g, prepared, kernel, kernel - 1 - padding, swap_channels=True)
    return apply_kernel(g, prepared, kernel, kernel - 1 - padding, method)


def weight_gradient(a: jax.Array, g: jax.Array, kernel: int, padding: int) -> jax.Array:
    """The cotangent of the kernel of ``conv(a, w, padding)`` for the output cotangent ``g``:
    ``dw[i, j, c, o] = sum_{b, y, x} a_pad[b, y + i, x + j, c] g[b, y, x, o]``, ``(kernel, kernel,
    C_in, C_out)``, written as one convolution with the examples as its features (``a`` as
    ``(C_in, H, W, B)``, ``g`` as the kernel ``(H_out, W_out, B, C_out)``)."""
    out = jax.lax.conv_general_dilated(a.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                       [(padding, padding)] * 2, dimension_numbers=_DIMENSIONS)
    assert out.shape[1:3] == (kernel, kernel), (out.shape, kernel)
    return out.transpose(1, 2, 0, 3)


def kernel_cotangent(a: jax.Array, g: jax.Array, kernel: int, padding: int) -> jax.Array:
    """:func:`weight_gradient`'s value by the faster formulation for these shapes (static): on a
    CPU, for the kernels of :data:`WINOGRAD_KERNELS`, Winograd's
    (:func:`eqjax.models.winograd.kernel_gradient`) when the input has at least 16 channels and
    the batch's output at least twice as many 2x2 tiles as the larger channel count (with few
    input channels its transforms dominate, with few tiles and many channels its final
    ``G^T dU G``); else :func:`weight_gradient`."""
    tiles = g.shape[0] * -(-g.shape[1] // winograd.TILE) * -(-g.shape[2] // winograd.TILE)
    if (jax.default_backend() == "cpu" and kernel in WINOGRAD_KERNELS and a.shape[-1] >= 16
            and tiles >= 2 * max(a.shape[-1], g.shape[-1])):
        return winograd.kernel_gradient(a, g, kernel, padding)
    return weight_gradient(a, g, kernel, padding)


def one_off_conv(a: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """``conv(a, w, padding)`` with ``w`` used once (prepared here): on a CPU by Winograd's algorithm
    for the kernels of :data:`WINOGRAD_KERNELS` when the input has at least 16 channels (with fewer,
    the transforms cost more than the products they save), else XLA's convolution."""
    kernel = w.shape[0]
    method = pass_method("auto", kernel, padding)
    if method != "winograd" or a.shape[-1] < 16:
        method = "direct"
    return apply_kernel(a, prepare_kernel(w, method), kernel, padding, method)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_for_parameter_gradients(a: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """:func:`conv` (as :func:`one_off_conv`) whose reverse-mode rule computes both cotangents without
    JAX's transposes of a convolution (:func:`input_gradient`, :func:`kernel_cotangent`); the same
    values as JAX's rule. Reverse mode only (JAX cannot take forward-mode derivatives of a
    ``custom_vjp`` function): EP's parameter gradient and the feedforward backprop baseline use it."""
    return one_off_conv(a, w, padding)


def _conv_forward(a, w, padding):
    return one_off_conv(a, w, padding), (a, w)


def _conv_backward(padding, residuals, g):
    a, w = residuals
    da = input_gradient(g, feedback_kernel(w).astype(g.dtype), padding)
    dw = kernel_cotangent(a, g, w.shape[0], padding)
    return da.astype(a.dtype), (dw if jnp.iscomplexobj(w) else dw.real).astype(w.dtype)


conv_for_parameter_gradients.defvjp(_conv_forward, _conv_backward)


def pool(a: jax.Array, kind: str, size: int) -> jax.Array:
    """Non-overlapping ``size x size`` pooling of ``a`` ``(B, H, W, C)`` (``kind`` static: ``"max"``,
    ``"avg"`` or ``"none"``): ``(B, H // size, W // size, C)``, trailing rows and columns dropped.
    Written as a reshape and a reduction; the derivative of ``"max"`` splits ties equally."""
    if kind == "none" or size == 1:
        return a
    batch, height, width, channels = a.shape
    h, w = height // size, width // size
    windows = a[:, : h * size, : w * size].reshape(batch, h, size, w, size, channels)
    return windows.max(axis=(2, 4)) if kind == "max" else windows.mean(axis=(2, 4))


def unpool(g: jax.Array, z: jax.Array, kind: str, size: int) -> jax.Array:
    """The transpose of :func:`pool`'s derivative at ``z`` ``(B, H, W, C)`` applied to ``g`` ``(B, H //
    size, W // size, C)``: ``(B, H, W, C)``. ``"max"`` sends each window's ``g`` to the positions of
    its maximum, split equally between ties (as JAX differentiates ``max``); ``"avg"`` spreads it
    evenly; dropped trailing rows and columns get zero."""
    if kind == "none" or size == 1:
        return g
    batch, height, width, channels = z.shape
    h, w = height // size, width // size
    if kind == "max":
        windows = z[:, : h * size, : w * size].reshape(batch, h, size, w, size, channels)
        top = windows == windows.max(axis=(2, 4), keepdims=True)
        count = jnp.sum(top, axis=(2, 4), keepdims=True, dtype=g.dtype)
        spread = jnp.where(top, (g / count[:, :, 0, :, 0])[:, :, None, :, None], 0)
    else:
        spread = jnp.broadcast_to((g / size ** 2)[:, :, None, :, None], (batch, h, size, w, size, channels))
    spread = spread.reshape(batch, h * size, w * size, channels)
    return jnp.pad(spread, ((0, 0), (0, height - h * size), (0, width - w * size), (0, 0)))


def per_example_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example inner product over every axis but the first: ``(B, ...) x (B, ...) -> (B,)``."""
    return jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7, 8))
def pooled_coupling(lower: jax.Array, upper: jax.Array, w: jax.Array, forward: jax.Array, feedback: jax.Array,
                    padding: int, kind: str, size: int, methods: tuple[str, str]) -> jax.Array:
    """``upper . pool(conv(lower, w, padding))`` per example, ``(B,)``: the interaction of two conv
    layers in the energy (``lower`` ``(B, H, W, C_in)``, ``upper`` the pooled map ``(B, H', W',
    C_out)``). With ``methods = (forward_method, feedback_method)`` (each ``"direct"``,
    ``"winograd"`` or ``"scatter"``: :func:`pass_method`), ``forward`` must be
    ``prepare_kernel(w, forward_method)`` and ``feedback`` ``prepare_feedback(w, feedback_method)``:
    the value and the state derivatives use them, the parameter derivative uses ``w``. ``padding``,
    ``kind``, ``size`` and ``methods`` are static.

    Derivatives (forward-mode rule; reverse mode transposes it): with ``z = conv(lower, w)``,
    ``d/d upper = pool(z)``, ``d/d lower = input_gradient(unpool(upper, z), w_flipped)`` and ``d/d w``
    the contraction of ``unpool(upper, z)`` with ``conv(lower, dw)``; a symbolic-zero tangent (an
    argument not being differentiated, e.g. the layers a half-sweep holds fixed) skips its term.
    """
    return per_example_dot(upper, pool(apply_kernel(lower, forward, w.shape[0], padding, methods[0]), kind, size))


def _pooled_coupling_jvp(padding, kind, size, methods, primals, tangents):
    lower, upper, w, forward, feedback = primals
    d_lower, d_upper, d_w, _, _ = tangents  # the value depends on forward and feedback only through w
    kernel = w.shape[0]
    z = apply_kernel(lower, forward, kernel, padding, methods[0])
    pooled = pool(z, kind, size)
    out = per_example_dot(upper, pooled)
    tangent = jnp.zeros_like(out)
    if not isinstance(d_upper, SymbolicZero):
        tangent = tangent + per_example_dot(d_upper, pooled)
    if not isinstance(d_lower, SymbolicZero) or not isinstance(d_w, SymbolicZero):
        spread = unpool(upper, z, kind, size)
        if not isinstance(d_lower, SymbolicZero):
            field = apply_feedback(spread, feedback.astype(spread.dtype), kernel, padding, methods[1])
            tangent = tangent + per_example_dot(d_lower, field)
        if not isinstance(d_w, SymbolicZero):
            tangent = tangent + per_example_dot(spread, conv(lower, d_w, padding))
    return out, tangent


pooled_coupling.defjvp(_pooled_coupling_jvp, symbolic_zeros=True)
