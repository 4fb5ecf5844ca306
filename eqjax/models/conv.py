"""Convolutional Hopfield energies (Ernoult et al. 2019; Laborieux et al. 2021; Scellier et al. 2023).

A network has an input image (``(H, W, C)``, clamped; the model takes it flattened in row-major
order, ``x`` of shape ``(H * W * C,)``, like every data path of eqjax), ``K`` convolutional layers, ``M``
dense hidden layers and an output layer of ``num_classes`` units. The state of one example is the
tuple ``(s_1, ..., s_K, d_1, ..., d_M, o)``: ``s_k`` a feature map ``(H_k, W_k, C_k)`` (NHWC per
example, after pooling), ``d_m`` a vector, ``o`` the output units.

Energy of one example (``s_0 = x``; ``P_k`` the pooling of layer ``k``; ``*`` the convolution
``jax.lax.conv_general_dilated`` with stride 1 and padding ``p_k``; ``flat`` flattens a map)::

    E = 1/2 sum_{hidden} ||s||^2
        - sum_k  s_k . P_k(W_k * s_{k-1})  - sum_k  b_k . s_k      (b_k per channel, summed over space)
        - sum_m  d_m . (d_{m-1} W) - b . d_m                        (d_0 = flat(s_K))
        + E_out(o, d_M)

(Laborieux et al. 2021, eq. 8, written as an energy: their primitive function ``Phi`` is
``-E + 1/2 ||s||^2``.) Hidden units are boxed in ``[0, 1]``: the hard-sigmoid ``clip(s, 0, 1)`` of
the references equals ``s`` on the box, so the activation is the box itself (as for the bilinear
deep Hopfield network, :mod:`eqjax.models.hopfield`). The readout ``E_out`` is

- ``readout="hopfield"``: ``1/2 ||o||^2 - o . (d_M W_o + b_o)``, output units in the energy like
  any layer (boxed by ``output_bounds``, default ``[0, 1]``; use with the squared-error cost).
  With linear outputs, minimising over ``o`` leaves ``-1/2 ||d_M W_o + b_o||^2`` in the energy,
  concave in ``d_M``: once the readout's singular values exceed 1 it feeds the winning class back
  and the hidden layers keep drifting as the relaxation goes on (RESULTS.md: on Fashion-MNIST
  after 3 epochs the test error rose with the number of sweeps);
- ``readout="projection"``: ``1/2 ||o - (d_M W_o + b_o)||^2``, unbounded ``o``. At the free
  equilibrium ``o = d_M W_o + b_o`` exactly and the output feeds nothing back into the network:
  the output is removed from the energy as in Laborieux et al. 2021's cross-entropy readout, and
  the loss ``C(d_M W_o + b_o, y)`` is theirs. In a nudged phase, minimising over ``o`` leaves
  ``E + M_beta(d_M W_o + b_o)`` with ``M_beta`` the Moreau envelope of ``beta C``, which equals
  ``beta C - beta^2/2 ||dC||^2 + O(beta^3)``: EP's estimate tends to the same loss gradient
  (one-sided bias O(beta), centered O(beta^2), as usual), and for ``W_o`` the centered estimate is
  the mean of ``dC/dW_o`` at the two nudged states, Laborieux et al.'s readout update. It keeps
  the eqjax contract (the cost sees ``output(state)``, a function of the state alone).

Pooling (static per layer, non-overlapping ``pool_size`` windows, trailing rows/columns that do not
fill a window are dropped, as ``MaxPool2d(2, 2)``): ``"max"`` (Laborieux et al. 2021, Scellier et
al. 2023), ``"avg"`` or ``"none"``. Ties in a max window share the derivative equally.

Relaxation:

- :class:`~eqjax.solvers.GradientDescent` works for every configuration.
- :class:`~eqjax.solvers.BlockCoordinate` (even then odd layers, diagonal Newton step). Layers
  interact only with their neighbours, so the even (odd) layers are mutually independent. With
  ``"avg"`` or ``"none"`` pooling and the hopfield readout the energy is quadratic in each layer
  with unit curvature and no intra-layer coupling: each half-sweep is the exact block minimum
  (as for DHN). With ``"max"`` pooling it is not: ``s_{k-1} -> -s_k . max-pool(W_k * s_{k-1})`` is
  concave in ``s_{k-1}`` (a maximum of linear functions weighted by ``s_k >= 0``), so ``E`` is a
  difference of convex functions in ``s_{k-1}``, and the block step (curvature 1, since max
  pooling has zero second derivative almost everywhere) is the concave-convex procedure step
  ``s_{k-1} <- clip(field at the current argmax pattern)``, Laborieux et al.'s fixed-point update:
  it minimises a convex majorant, so the energy never increases, but one step is not the block
  minimum (the argmax pattern may change); the sweeps still converge to an equilibrium, more
  slowly than exact block minima (tests/test_conv.py; about 80 sweeps to reach 1e-4 on the
  conv-fmnist net after two small epochs, while its prediction is stable after about 5).
- The projection readout adds ``1/2 ||d_M W_o||^2``, an intra-layer coupling of ``d_M``: its block
  step divides by the Hessian's row sums ``1 + (W_o W_o^T 1)_i`` instead of the curvature, and
  can raise the energy once ``W_o W_o^T`` has eigenvalues above about 1 (seen after one epoch on
  Fashion-MNIST: the sweeps oscillated). Relax it with :class:`~eqjax.solvers.FixedPoint`
  (Laborieux et al.'s dynamics: in the free phase ``o = d_M W_o + b_o`` after every sweep and the
  readout acts on nothing; in a nudged phase it nudges ``d_M`` by ``-beta W_o dC/do``; a strong
  readout and a large ``beta`` can still make those nudged sweeps oscillate), or with gradient
  descent (step below ``1 / L``).

Parameters: ``{"weights": (W_1, .., W_K, V_1, .., V_M, W_o), "biases": (b_1, .., b_K, c_1, ..,
c_M, b_o)}`` with ``W_k`` ``(kernel_k, kernel_k, C_{k-1}, C_k)`` (HWIO), ``V_m`` ``(n_{m-1}, n_m)``,
``W_o`` ``(n_M, num_classes)``; one entry per layer in both tuples, like
:class:`~eqjax.models.Hopfield`, so per-layer learning rates apply unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from eqjax.models.base import EnergyModel, default_float
from eqjax.models.conv_ops import (METHODS, per_example_dot, conv, conv_for_parameter_gradients, pool, pass_method,
                                   pooled_coupling, prepare_feedback, prepare_kernel)

POOLS = ("max", "avg", "none")
READOUTS = ("hopfield", "projection")
INITS = ("glorot", "kaiming")


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


class ConvHopfield(EnergyModel):
    """A convolutional Hopfield energy model (see the module docstring). Build it with
    :func:`conv_hopfield`. Every field is static; the model holds no arrays."""

    image_shape: tuple[int, int, int] = struct.field(pytree_node=False)
    channels: tuple[int, ...] = struct.field(pytree_node=False)
    kernels: tuple[int, ...] = struct.field(pytree_node=False)
    paddings: tuple[int, ...] = struct.field(pytree_node=False)
    pools: tuple[str, ...] = struct.field(pytree_node=False)
    pool_size: int = struct.field(pytree_node=False, default=2)
    dense: tuple[int, ...] = struct.field(pytree_node=False, default=())
    num_classes: int = struct.field(pytree_node=False, default=10)
    readout: str = struct.field(pytree_node=False, default="hopfield")
    output_bounds: tuple[float, float] | None = struct.field(pytree_node=False, default=None)
    gain: float = struct.field(pytree_node=False, default=1.0)
    init_scheme: str = struct.field(pytree_node=False, default="kaiming")
    conv_method: str = struct.field(pytree_node=False, default="auto")

    # --- shapes -----------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(H * W * C,)``: one image flattened in row-major (height, width, channel) order."""
        return (math.prod(self.image_shape),)

    def images(self, x: jax.Array) -> jax.Array:
        """A batch of flat inputs ``(B, H * W * C)`` as images ``(B, H, W, C)``."""
        return x.reshape(x.shape[0], *self.image_shape)

    @property
    def num_outputs(self) -> int:
        """Output units, one per class."""
        return self.num_classes

    @property
    def num_conv(self) -> int:
        """Convolutional layers (each followed by its pooling)."""
        return len(self.channels)

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-example shape of every state leaf: the pooled maps, the dense layers, the output."""
        return layer_shapes(self.image_shape, self.channels, self.kernels, self.paddings, self.pools,
                            self.pool_size, self.dense, self.num_classes)

    @property
    def bounds(self) -> tuple:
        """``(0, 1)`` for hidden layers; the output's box: ``output_bounds`` (default ``(0, 1)``) for
        the hopfield readout, ``(-inf, inf)`` for the projection readout."""
        hidden = tuple((0.0, 1.0) for _ in self.layer_shapes[:-1])
        if self.readout == "projection":
            return hidden + ((-math.inf, math.inf),)
        return hidden + (self.output_bounds or (0.0, 1.0),)

    # --- parameters and states --------------------------------------------------------------------

    def init(self, key: jax.Array, dtype=None) -> dict:
        """Weights ``U(-a, a)``, zero biases. ``init_scheme="kaiming"``: ``a = gain / sqrt(fan_in)``
        (fan-in ``k * k * C_in`` for a convolution; PyTorch's default range for ``gain = 1``, used by
        Laborieux et al.'s code); ``"glorot"``: ``a = gain * sqrt(6 / (fan_in + fan_out))``.
        ``dtype`` defaults to JAX's default float."""
        dtype = default_float() if dtype is None else dtype
        shapes = self.weight_shapes
        keys = jax.random.split(key, len(shapes))
        weights, biases = [], []
        for k, shape in zip(keys, shapes):
            fan_in = math.prod(shape[:-1])
            fan_out = shape[-1] * math.prod(shape[:-2])  # k * k * C_out for a convolution
            if self.init_scheme == "kaiming":
                limit = self.gain / math.sqrt(fan_in)
            else:
                limit = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
            weights.append(jax.random.uniform(k, shape, dtype, -limit, limit))
            biases.append(jnp.zeros((shape[-1],), dtype))
        return {"weights": tuple(weights), "biases": tuple(biases)}

    @property
    def weight_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Kernels ``(k, k, C_in, C_out)`` (HWIO) of the conv layers, then ``(n_in, n_out)`` of the
        dense layers and the readout, in the order of ``params["weights"]``."""
        shapes, c_in = [], self.image_shape[2]
        for c, k in zip(self.channels, self.kernels):
            shapes.append((k, k, c_in, c))
            c_in = c
        n_in = math.prod(self.layer_shapes[self.num_conv - 1])
        for n in (*self.dense, self.num_classes):
            shapes.append((n_in, n))
            n_in = n
        return tuple(shapes)

    def init_state(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """All-zero state for one flat image ``x``, in ``x``'s dtype."""
        return tuple(jnp.zeros(shape, x.dtype) for shape in self.layer_shapes)

    # --- energy -----------------------------------------------------------------------------------

    def input_field(self, params: dict, x: jax.Array, convolve=conv) -> jax.Array:
        """``P_1(W_1 * x)`` for a batch of flat images ``x`` ``(B, H * W * C)``: the first layer's
        input field ``(B, H_1, W_1, C_1)``, independent of the state. ``convolve``: :func:`conv` or
        :func:`conv_for_parameter_gradients` (the same values)."""
        return pool(convolve(self.images(x), params["weights"][0], self.paddings[0]), self.pools[0], self.pool_size)

    def couplings(self, params: dict, kernels=None):
        """The interaction ``s_k . P_k(W_k * s_{k-1})`` of conv layers ``k - 1`` and ``k`` (``k >= 1``,
        counted from 0 here), as a function ``(k, lower, upper) -> (B,)``.

        With ``kernels`` (:meth:`relaxation_kernels`, as :meth:`prepare` makes them) it is
        :func:`~eqjax.models.conv_ops.pooled_coupling`, whose state derivatives are forward
        convolutions in every mode of differentiation (the relaxation); without, the plain
        expression through :func:`~eqjax.models.conv_ops.conv_for_parameter_gradients`, fast in
        reverse mode only (EP's parameter gradient)."""
        weights = params["weights"]
        if kernels is None:
            return lambda k, lower, upper: per_example_dot(upper, pool(conv_for_parameter_gradients(lower, weights[k], self.paddings[k]),
                                                            self.pools[k], self.pool_size))
        methods = self.relaxation_methods
        return lambda k, lower, upper: pooled_coupling(lower, upper, weights[k], *kernels[k], self.paddings[k],
                                                       self.pools[k], self.pool_size, methods[k])

    def internal_energies(self, params: dict, states: tuple, coupling) -> jax.Array:
        """Per-example energies ``(B,)`` of batched ``states``, without the input term
        ``-s_1 . P_1(W_1 * x)``; ``coupling`` is one of :meth:`couplings`."""
        weights, biases, K = params["weights"], params["biases"], self.num_conv
        hidden = states[:-1]
        energy = sum(0.5 * per_example_dot(s, s) for s in hidden)
        for k in range(K):
            s = states[k]
            energy = energy - per_example_dot(s, jnp.broadcast_to(biases[k].astype(s.dtype), s.shape))
            if k > 0:
                energy = energy - coupling(k, states[k - 1], s)
        below = _flat(states[K - 1])
        for m in range(len(self.dense)):
            d = states[K + m]
            energy = energy - per_example_dot(d, below @ weights[K + m].astype(d.dtype) + biases[K + m].astype(d.dtype))
            below = d
        o = states[-1]
        drive = below @ weights[-1].astype(o.dtype) + biases[-1].astype(o.dtype)
        if self.readout == "projection":
            return energy + 0.5 * per_example_dot(o - drive, o - drive)
        return energy + 0.5 * per_example_dot(o, o) - per_example_dot(o, drive)

    @property
    def relaxation_methods(self) -> tuple[tuple[str, str], ...]:
        """Per conv layer, how the relaxation runs its forward and its feedback convolution
        (``"direct"``, ``"winograd"`` or ``"scatter"``): ``conv_method`` resolved for each pass by
        :func:`~eqjax.models.conv_ops.pass_method`. Static."""
        return tuple((pass_method(self.conv_method, k, p), pass_method(self.conv_method, k, k - 1 - p))
                     for k, p in zip(self.kernels, self.paddings))

    def relaxation_kernels(self, params: dict) -> tuple:
        """Per conv layer but the first (whose input is clamped; ``None`` in its place), the pair
        ``(forward, feedback)`` that :func:`~eqjax.models.conv_ops.pooled_coupling` takes: the
        kernel and its :func:`~eqjax.models.conv_ops.feedback_kernel`, each prepared for its pass
        (:func:`~eqjax.models.conv_ops.prepare_kernel`, :func:`~eqjax.models.conv_ops.prepare_feedback`)."""
        pairs = [None]
        for w, (forward, feedback) in zip(params["weights"][1:self.num_conv], self.relaxation_methods[1:]):
            pairs.append((prepare_kernel(w, forward), prepare_feedback(w, feedback)))
        return tuple(pairs)

    def energy(self, params: dict, state: tuple, x: jax.Array) -> jax.Array:
        """Internal energy of one example (``x`` ``(H * W * C,)``); a scalar."""
        states, x = tuple(s[None] for s in state), x[None]
        coupling = self.couplings(params, self.relaxation_kernels(params))
        return (self.internal_energies(params, states, coupling) - per_example_dot(states[0], self.input_field(params, x)))[0]

    def prepare(self, params: dict, x: jax.Array) -> dict:
        """For the relaxation of the batch ``x`` ``(B, H * W * C)``: the input field ``P_1(W_1 * x)``
        and the :meth:`relaxation_kernels` (computed once for every step and phase), and the
        parameters."""
        return {"params": params, "drive": self.input_field(params, x), "kernels": self.relaxation_kernels(params)}

    def relaxation_energy(self, prepared: dict, states: tuple, x: jax.Array) -> jax.Array:
        """The batch's summed energy from :meth:`prepare`'s input field and relaxation kernels."""
        params = prepared["params"]
        coupling = self.couplings(params, prepared["kernels"])
        return jnp.sum(self.internal_energies(params, states, coupling) - per_example_dot(states[0], prepared["drive"]))

    def energy_difference(self, params: dict, state_a: tuple, state_b: tuple, x: jax.Array) -> jax.Array:
        """``E(state_a) - E(state_b)`` for one example; see :meth:`energy_differences`."""
        batch = lambda state: tuple(s[None] for s in state)
        return self.energy_differences(params, batch(state_a), batch(state_b), x[None])[0]

    def energy_differences(self, params: dict, states_a: tuple, states_b: tuple, x: jax.Array) -> jax.Array:
        """``E(states_a) - E(states_b)`` per example ``(B,)`` (EP's weight update), with the input term
        factored as ``-(a_1 - b_1) . P_1(W_1 * x)``: one input convolution instead of two. Batched,
        so that each kernel's gradient is one convolution over the batch. Differentiate it in
        reverse mode only (its convolutions are
        :func:`~eqjax.models.conv_ops.conv_for_parameter_gradients`)."""
        coupling = self.couplings(params)
        internal = self.internal_energies(params, states_a, coupling) - self.internal_energies(params, states_b, coupling)
        return internal - per_example_dot(states_a[0] - states_b[0], self.input_field(params, x, conv_for_parameter_gradients))

    def output(self, state: tuple) -> jax.Array:
        """The output units of one example, ``(num_classes,)``."""
        return state[-1]

    def feedforward(self, params: dict, x: jax.Array) -> jax.Array:
        """The outputs ``(B, num_classes)`` of the feedforward CNN with the same layers: each layer
        ``clip(P_k(W_k * s_{k-1}) + b_k)`` (dense: ``clip(s W + b)``) into its box, computed once
        from the input with no feedback from the layers above. The backprop baseline of the same
        architecture (Laborieux et al. 2021 compare EP with it); ``x`` ``(B, H * W * C)``."""
        weights, biases, bounds = params["weights"], params["biases"], self.bounds
        a = self.input_field(params, x, conv_for_parameter_gradients)
        for k in range(self.num_conv):
            if k:
                a = pool(conv_for_parameter_gradients(a, weights[k], self.paddings[k]), self.pools[k], self.pool_size)
            a = jnp.clip(a + biases[k].astype(a.dtype), *bounds[k])
        a = _flat(a)
        for w, b, (lo, hi) in zip(weights[self.num_conv:], biases[self.num_conv:], bounds[self.num_conv:]):
            a = jnp.clip(a @ w.astype(a.dtype) + b.astype(a.dtype), lo, hi)
        return a


def layer_shapes(image_shape, channels, kernels, paddings, pools, pool_size, dense, num_classes):
    """Per-example state shapes: ``(H_k, W_k, C_k)`` per conv layer, ``(n_m,)`` per dense layer,
    ``(num_classes,)``; ``ValueError`` when a map shrinks to nothing."""
    height, width, _ = image_shape
    shapes = []
    for k, (c, size, pad, kind) in enumerate(zip(channels, kernels, paddings, pools)):
        height, width = height + 2 * pad - size + 1, width + 2 * pad - size + 1
        if kind != "none":
            height, width = height // pool_size, width // pool_size
        if height < 1 or width < 1:
            raise ValueError(f"conv layer {k + 1} leaves an empty feature map ({height} x {width}); use a smaller "
                             "kernel, more padding or fewer pooling layers")
        shapes.append((height, width, c))
    return tuple(shapes) + tuple((n,) for n in dense) + ((num_classes,),)


def _ints(name, values, count, minimum):
    values = (values,) * count if isinstance(values, int) else tuple(values)
    if len(values) != count or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(f"{name} must be an int >= {minimum} or {count} of them, got {values!r}")
    return values


def conv_hopfield(image_shape, channels, kernel=3, padding=1, pooling="max", pool_size: int = 2, dense=(),
                  num_classes: int = 10, readout: str = "hopfield", output_bounds=None, gain: float = 1.0,
                  init_scheme: str = "kaiming", conv_method: str = "auto") -> ConvHopfield:
    """A convolutional Hopfield model (see the module docstring).

    Args:
      image_shape: ``(H, W, C)`` of one input image.
      channels: output channels of each conv layer, e.g. ``(32, 64)``.
      kernel: side of the square kernels (stride 1), an int or one per conv layer.
      padding: zero padding on each side, an int or one per conv layer.
      pooling: ``"max"``, ``"avg"`` or ``"none"``, or one per conv layer.
      pool_size: side of the non-overlapping pooling windows.
      dense: sizes of dense hidden layers after the last conv layer (may be empty).
      num_classes: output units.
      readout: ``"hopfield"`` (output units in the energy) or ``"projection"`` (output removed from
        the energy, for a cross-entropy cost; Laborieux et al. 2021).
      output_bounds: ``(lo, hi)`` of the output units with the hopfield readout (default ``(0, 1)``;
        ``(-inf, inf)`` for linear outputs).
      gain: scale of the weight initialisation (see :meth:`ConvHopfield.init`).
      init_scheme: the weight initialisation's scheme (see :meth:`ConvHopfield.init`).
      conv_method: how the relaxation runs its convolutions: ``"direct"`` (XLA's convolution),
        ``"winograd"`` (:mod:`eqjax.models.winograd`), ``"scatter"``
        (:func:`~eqjax.models.conv_ops.scatter_conv`) or ``"auto"`` (on a CPU the fastest measured
        for each pass, direct elsewhere: :func:`~eqjax.models.conv_ops.pass_method`). The same
        values up to float rounding; the parameter gradients always use direct convolutions.
    """
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in image_shape):
        raise ValueError(f"image_shape must be (H, W, C) positive ints, got {image_shape!r}")
    channels = (channels,) if isinstance(channels, int) else tuple(channels)
    if not channels:
        raise ValueError("channels must name at least one conv layer")
    channels = _ints("channels", channels, len(channels), 1)
    count = len(channels)
    kernels, paddings = _ints("kernel", kernel, count, 1), _ints("padding", padding, count, 0)
    pools = (pooling,) * count if isinstance(pooling, str) else tuple(pooling)
    if len(pools) != count or any(p not in POOLS for p in pools):
        raise ValueError(f"pooling must be one of {POOLS} or {count} of them, got {pooling!r}")
    _ints("pool_size", pool_size, 1, 1)
    dense = _ints("dense", tuple(dense), len(tuple(dense)), 1)
    _ints("num_classes", num_classes, 1, 1)
    for name, value, choices in (("readout", readout, READOUTS), ("init_scheme", init_scheme, INITS),
                                 ("conv_method", conv_method, METHODS)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    if not gain > 0:
        raise ValueError(f"gain must be positive, got {gain!r}")
    if output_bounds is not None:
        if readout == "projection":
            raise ValueError("output_bounds applies to the hopfield readout; projection outputs are unbounded")
        lo, hi = (float(b) for b in output_bounds)
        if not lo < hi:
            raise ValueError(f"output_bounds must be (lo, hi) with lo < hi, got {output_bounds!r}")
        output_bounds = (lo, hi)
    layer_shapes(image_shape, channels, kernels, paddings, pools, pool_size, dense, num_classes)  # raises
    return ConvHopfield(image_shape=image_shape, channels=channels, kernels=kernels, paddings=paddings, pools=pools,
                        pool_size=int(pool_size), dense=dense, num_classes=int(num_classes), readout=readout,
                        output_bounds=output_bounds, gain=float(gain), init_scheme=init_scheme,
                        conv_method=conv_method)
