"""A PyTorch baseline for convolutional EP: one training step of a convolutional Hopfield network as
plain, eager ``torch`` operations, written from the model's equations (eqjax/models/conv.py), for
``make bench`` to time side by side with eqjax (benchmarks/conv_vs_torch.py).

The network (NCHW, as PyTorch lays maps out): conv layers ``s_1 .. s_K`` boxed in [0, 1], each
``P(W_k * s_{k-1})`` with 2x2 max pooling, and linear output units ``o`` in the energy (the hopfield
readout with ``output_bounds=(-inf, inf)``) under the squared-error cost ``1/2 ||o - onehot(y)||^2``.
Centered EP (Laborieux et al. 2021): a free phase, then nudged phases at ``+beta`` and ``-beta``
started from the free state, each a fixed number of even/odd fixed-point sweeps ``s <- clip(s -
dF/ds)`` (even layers, counting the input as layer 0, then odd ones), as
:class:`eqjax.solvers.FixedPoint`; then the gradient of ``(E(s+) - E(s-)) / 2 beta`` by autograd
and a plain SGD step.

Each half-sweep computes the field of every layer it updates from the current state, as the
reference code of Scellier et al. (energy-based-learning) does: the bottom-up part
``maxpool(conv(s_{k-1}, W_k))`` and the top-down part through the pooling's argmax at the current
``conv(s_k, W_{k+1})`` (``max_unpool2d`` then ``conv_transpose2d``). Differences from eqjax that do
not change the amount of arithmetic: ties in a pooling window send the top-down field to one
position here (PyTorch's argmax), to all of them equally in eqjax; maps are NCHW, so the output
layer sees the last map flattened in (C, H, W) order.

``torch`` is a benchmark dependency only (``pip install -e '.[bench]'``), never the library's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ConvEP:
    """Centered EP on a conv Hopfield net in eager PyTorch (see the module docstring).

    Args:
      image_shape: ``(H, W, C)`` of one input.
      channels: output channels of each conv layer.
      kernel, padding: one int each (square kernels, stride 1).
      num_classes: output units.
      sweeps: ``(free, positive, negative)`` fixed-point sweeps per phase.
      beta, learning_rate: EP's nudge and the SGD step.
      seed: for the Kaiming-uniform weights (PyTorch's default range) and zero biases.
    """

    def __init__(self, image_shape, channels, kernel, padding, num_classes=10, sweeps=(5, 5, 5), beta=0.25,
                 learning_rate=0.01, seed=0):
        generator = torch.Generator().manual_seed(seed)
        height, width, c_in = image_shape
        self.padding, self.sweeps, self.beta, self.learning_rate = padding, sweeps, beta, learning_rate
        self.image_shape, self.num_classes = image_shape, num_classes
        self.kernels, self.biases, self.shapes = [], [], []
        for c in channels:
            bound = 1 / np.sqrt(c_in * kernel * kernel)
            self.kernels.append((torch.rand(c, c_in, kernel, kernel, generator=generator) * 2 - 1) * bound)
            self.biases.append(torch.zeros(c))
            height, width = (height + 2 * padding - kernel + 1) // 2, (width + 2 * padding - kernel + 1) // 2
            self.shapes.append((c, height, width))
            c_in = c
        n_in = int(np.prod(self.shapes[-1]))
        self.readout = (torch.rand(n_in, num_classes, generator=generator) * 2 - 1) / np.sqrt(n_in)
        self.readout_bias = torch.zeros(num_classes)

    def parameters(self) -> list:
        return [*self.kernels, *self.biases, self.readout, self.readout_bias]

    # --- relaxation -------------------------------------------------------------------------------

    def _top_down(self, k: int, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """``d/d lower`` of ``upper . maxpool(conv(lower, W_k))``: the field conv layer ``k`` sends down."""
        z = F.conv2d(lower, self.kernels[k], padding=self.padding)
        _, where = F.max_pool2d(z, 2, return_indices=True)
        spread = F.max_unpool2d(upper, where, 2, output_size=z.shape[-2:])
        return F.conv_transpose2d(spread, self.kernels[k], padding=self.padding)

    def _field(self, i: int, state: list, drive: torch.Tensor) -> torch.Tensor:
        """The new value of conv layer ``i`` (0-based) at the current ``state``: ``clip(field)``."""
        last = len(self.kernels) - 1
        up = drive if i == 0 else F.max_pool2d(F.conv2d(state[i - 1], self.kernels[i], padding=self.padding), 2)
        field = up + self.biases[i][:, None, None]
        if i < last:
            field = field + self._top_down(i + 1, state[i], state[i + 1])
        else:
            field = field + (state[-1] @ self.readout.T).view_as(state[i])
        return field.clamp(0, 1)

    def _output(self, state: list, beta: float, target: torch.Tensor) -> torch.Tensor:
        """``o - dF/do = z - beta (o - t)`` with ``z = flat(s_K) W_o + b_o`` (unbounded outputs)."""
        z = state[-2].flatten(1) @ self.readout + self.readout_bias
        return z - beta * (state[-1] - target)

    def relax(self, state: list, drive: torch.Tensor, beta: float, target: torch.Tensor, sweeps: int) -> list:
        """``sweeps`` even/odd sweeps (leaf ``i`` is layer ``i + 1``; the output is the last leaf)."""
        num = len(state)
        groups = ([i for i in range(num) if (i + 1) % 2 == 0], [i for i in range(num) if (i + 1) % 2 == 1])
        for _ in range(sweeps):
            for group in groups:
                new = {i: (self._output(state, beta, target) if i == num - 1 else self._field(i, state, drive))
                       for i in group}
                state = [new.get(i, s) for i, s in enumerate(state)]
        return state

    # --- learning ---------------------------------------------------------------------------------

    def _energy(self, state: list, x: torch.Tensor) -> torch.Tensor:
        """The batch's summed energy (differentiable in the parameters)."""
        energy = sum(0.5 * (s * s).sum() for s in state[:-1])
        below = x
        for k, (w, b, s) in enumerate(zip(self.kernels, self.biases, state[:-1])):
            field = F.max_pool2d(F.conv2d(below, w, padding=self.padding), 2) + b[:, None, None]
            energy = energy - (s * field).sum()
            below = s
        o = state[-1]
        return energy + 0.5 * (o * o).sum() - (o * (below.flatten(1) @ self.readout + self.readout_bias)).sum()

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on a batch (``x`` ``(B, C, H, W)``, ``y`` ``(B,)`` int64); returns the
        free phase's mean squared-error loss."""
        batch = x.shape[0]
        target = F.one_hot(y, self.num_classes).to(x.dtype)
        drive = F.max_pool2d(F.conv2d(x, self.kernels[0], padding=self.padding), 2)
        start = [torch.zeros(batch, *shape) for shape in self.shapes] + [torch.zeros(batch, self.num_classes)]
        free_sweeps, positive_sweeps, negative_sweeps = self.sweeps
        free = self.relax(start, drive, 0.0, target, free_sweeps)
        positive = self.relax(free, drive, self.beta, target, positive_sweeps)
        negative = self.relax(free, drive, -self.beta, target, negative_sweeps)
        params = self.parameters()
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            contrast = (self._energy(positive, x) - self._energy(negative, x)) / (2 * self.beta * batch)
            grads = torch.autograd.grad(contrast, params)
        for p, g in zip(params, grads):
            p.requires_grad_(False)
            p.sub_(self.learning_rate * g)
        return 0.5 * ((free[-1] - target) ** 2).sum(1).mean()
