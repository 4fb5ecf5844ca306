"""Winograd's convolution (eqjax.models.winograd) against XLA's, and a conv net relaxed and trained
with either, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqjax
from eqjax.estimators import EP
from eqjax.models import winograd
from eqjax.models.conv_ops import (METHODS, apply_feedback, conv, pass_method, prepare_feedback, scatter_conv,
                                   weight_gradient)


@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("padding", [0, 1, 2, 4])
def test_winograd_convolution_equals_xla(kernel, padding):
    keys = jax.random.split(jax.random.key(kernel * 10 + padding), 3)
    w = jax.random.normal(keys[0], (kernel, kernel, 3, 4), jnp.float64)
    u = winograd.kernel_transform(w)
    assert u.shape == (kernel + 1, kernel + 1, 3, 4)
    for height, width in [(7, 9), (6, 6), (5, 8)]:  # odd and even output sizes: partial tiles
        a = jax.random.normal(keys[1], (2, height, width, 3), jnp.float64)
        expected = conv(a, w, padding)
        got = winograd.conv(a, u, kernel, padding)
        assert got.shape == expected.shape
        # float64 round-off: the transforms' coefficients are 1, 1/2 and 1/6 at most for r <= 5
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("kernel, padding", [(3, 1), (3, 0), (5, 0), (5, 2), (2, 1)])
def test_winograd_kernel_gradient_equals_the_direct_one(kernel, padding):
    keys = jax.random.split(jax.random.key(kernel + 7 * padding), 2)
    a = jax.random.normal(keys[0], (2, 7, 9, 3), jnp.float64)
    g = jax.random.normal(keys[1], conv(a, jnp.zeros((kernel, kernel, 3, 4)), padding).shape, jnp.float64)
    expected = weight_gradient(a, g, kernel, padding)
    got = winograd.kernel_gradient(a, g, kernel, padding)
    assert got.shape == expected.shape == (kernel, kernel, 3, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(expected))))


def test_parameter_gradients_take_the_winograd_kernel_gradient_where_it_pays():
    # 16 input channels and 64 output tiles >= 2 x 16 channels: kernel_cotangent takes Winograd's
    # formulation on a CPU; the reverse-mode rule of conv_for_parameter_gradients equals JAX's
    from eqjax.models.conv_ops import conv_for_parameter_gradients, kernel_cotangent

    keys = jax.random.split(jax.random.key(3), 3)
    a = jax.random.normal(keys[0], (4, 8, 8, 16), jnp.float64)
    w = jax.random.normal(keys[1], (3, 3, 16, 16), jnp.float64)
    g = jax.random.normal(keys[2], (4, 8, 8, 16), jnp.float64)
    np.testing.assert_allclose(kernel_cotangent(a, g, 3, 1), weight_gradient(a, g, 3, 1), rtol=1e-11, atol=1e-11)
    loss = lambda f: lambda w_: jnp.sum(f(a, w_, 1) * g)
    np.testing.assert_allclose(jax.grad(loss(conv_for_parameter_gradients))(w), jax.grad(loss(conv))(w),
                               rtol=1e-11, atol=1e-11)  # float64 round-off


def test_winograd_convolution_crops_for_a_negative_padding_and_takes_complex_maps():
    # the feedback pass of a layer with padding p > k - 1 is a convolution with a negative padding;
    # holomorphic EP relaxes complex states with real kernels
    keys = jax.random.split(jax.random.key(1), 3)
    w = jax.random.normal(keys[0], (3, 3, 2, 3), jnp.float64)
    a = jax.random.normal(keys[1], (2, 9, 8, 2)) + 1j * jax.random.normal(keys[2], (2, 9, 8, 2))
    a = a.astype(jnp.complex128)
    expected = conv(a, w, -1)
    got = winograd.conv(a, winograd.kernel_transform(w), 3, -1)
    assert got.shape == expected.shape == (2, 5, 4, 3) and got.dtype == jnp.complex128
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(expected))))


def test_the_transforms_are_the_published_ones_for_two_by_three():
    # Lavin and Gray 2016, F(2, 3): A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], B^T = [[1, 0, -1, 0], [0, 1, 1, 0],
    # [0, -1, 1, 0], [0, 1, 0, -1]], G with rows (1, 0, 0), 1/2 (1, 1, 1), 1/2 (1, -1, 1), (0, 0, 1). Here the
    # 1/2 sits in B^T's middle rows instead of G's, and the point at infinity has the opposite sign in A^T
    # and B^T: the same products
    at, g, bt = winograd.matrices(2, 3)
    np.testing.assert_allclose(at @ np.diag([1, 1, 1, -1]), [[1, 1, 1, 0], [0, 1, -1, -1]])
    np.testing.assert_allclose(np.diag([1, .5, .5, 1]) @ g, [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    np.testing.assert_allclose(np.diag([1, 2, 2, -1]) @ bt, [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
                               atol=1e-15)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("padding", [0, 1, 2, 4, 6])
def test_scatter_convolution_equals_xla(kernel, padding):
    keys = jax.random.split(jax.random.key(kernel * 10 + padding), 2)
    w = jax.random.normal(keys[0], (kernel, kernel, 3, 4), jnp.float64)
    a = jax.random.normal(keys[1], (2, 7, 6, 3), jnp.float64)
    expected = conv(a, w, padding)
    got = scatter_conv(a, w, padding)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])
@pytest.mark.parametrize("kernel, padding", [(3, 1), (3, 0), (5, 0), (5, 2)])
def test_the_feedback_pass_is_the_transpose_of_the_convolution_in_every_method(method, kernel, padding):
    # prepare_feedback / apply_feedback (the Winograd one contracts the unswapped channels) against
    # JAX's own transpose of a -> conv(a, w, padding), with 3 input and 4 output channels
    keys = jax.random.split(jax.random.key(kernel + 11 * padding), 2)
    w = jax.random.normal(keys[0], (kernel, kernel, 3, 4), jnp.float64)
    a = jnp.zeros((2, 7, 9, 3), jnp.float64)
    g = jax.random.normal(keys[1], conv(a, w, padding).shape, jnp.float64)
    expected, = jax.linear_transpose(lambda a: conv(a, w, padding), a)(g)
    got = apply_feedback(g, prepare_feedback(w, method), kernel, padding, method)
    assert got.shape == expected.shape
    # float64 round-off of the transforms, as in test_winograd_convolution_equals_xla
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(expected))))


def test_pass_method_resolves_auto_by_backend_kernel_and_padding():
    on_cpu = jax.default_backend() == "cpu"
    # same-size passes (3x3 with padding 1, 5x5 with padding 2): Winograd; a feedback pass that
    # pads k - 1 = 4 (a 5x5 layer without padding): from the input's side
    assert pass_method("auto", 3, 1) == pass_method("auto", 5, 2) == ("winograd" if on_cpu else "direct")
    assert pass_method("auto", 5, 4) == ("scatter" if on_cpu else "direct")
    assert pass_method("auto", 5, 0) == ("winograd" if on_cpu else "direct")
    assert pass_method("auto", 4, 1) == pass_method("direct", 3, 1) == "direct"
    assert pass_method("winograd", 7, 3) == "winograd" and pass_method("scatter", 3, 0) == "scatter"
    with pytest.raises(ValueError, match="conv method must be one of"):
        pass_method("fft", 3, 1)
    with pytest.raises(ValueError, match="conv_method must be one of"):
        eqjax.models.conv_hopfield((8, 8, 1), (2, 3), conv_method="fft")


@pytest.mark.parametrize("kernel, padding, image, method", [
    (3, 1, (8, 8, 2), "winograd"), (3, 1, (8, 8, 2), "scatter"),
    (5, 0, (16, 16, 1), "auto"),  # on a CPU: Winograd forward passes, feedback passes from the input's side
])
def test_a_conv_net_relaxes_and_learns_the_same_with_every_method(kernel, padding, image, method):
    # the relaxation's convolutions are the only difference: the free state and EP's gradient agree
    # with direct convolutions to float64 round-off
    def gradient(method):
        model = eqjax.models.conv_hopfield(image, (3, 4), kernel=kernel, padding=padding, num_classes=3,
                                           gain=1.5, conv_method=method)
        params = model.init(jax.random.key(0), jnp.float64)
        x = jax.random.uniform(jax.random.key(1), (4, *model.input_shape), jnp.float64)
        y = jnp.array([0, 1, 2, 1])
        solver = eqjax.solvers.BlockCoordinate(tol=1e-13, max_steps=2_000)
        return eqjax.gradients(model, eqjax.costs.squared_error(), solver, EP(beta=0.05, variant="centered"),
                               params, x, y)

    (direct, aux_direct), (fast, aux_fast) = gradient("direct"), gradient(method)
    for d, f in zip(jax.tree.leaves((direct, aux_direct.free_state)), jax.tree.leaves((fast, aux_fast.free_state))):
        np.testing.assert_allclose(f, d, rtol=1e-9, atol=1e-11)  # round-off, amplified by the relaxation
