"""The demo's own network pieces, in plain NumPy: Linear, Conv2d, Sigmoid, ReLU,
Flatten, Sequential, softmax cross-entropy and SGD.

They follow the style of :mod:`numbanorm.layers` (``forward``/``__call__``,
``backward(dy) -> dx``, ``params`` and ``grads`` dicts, gradients accumulated
until ``zero_grad()``, ``train()``/``eval()``), so the normalization layers slot
in between them. They are the demo's, kept short, and not part of numbanorm's API.
"""
from __future__ import annotations

import numpy as np


class Layer:
    """Parameters and gradients as dicts of arrays; train/eval; zero_grad."""

    def __init__(self):
        self.params, self.grads, self.training = {}, {}, True

    def __call__(self, x):
        return self.forward(x)

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def _param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)


class Linear(Layer):
    """``y = x @ weight + bias``; weight (in, out) drawn uniformly in +-1/sqrt(in), as PyTorch does."""

    def __init__(self, n_in, n_out, rng, bias=True, dtype=np.float32):
        super().__init__()
        bound = 1.0 / np.sqrt(n_in)
        self._param("weight", rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype))
        b = rng.uniform(-bound, bound, n_out).astype(dtype)   # drawn either way: same weights after it
        if bias:
            self._param("bias", b)

    def forward(self, x):
        self.x = x
        y = x @ self.params["weight"]
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def backward(self, dy):
        self.grads["weight"] += self.x.T @ dy
        if "bias" in self.grads:
            self.grads["bias"] += dy.sum(axis=0)
        return dy @ self.params["weight"].T


def im2col(x, k, stride, pad):
    """The k x k patches of NCHW ``x`` as rows: ``(N * OH * OW, C * k * k)``, and (OH, OW)."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, oh, ow, c, k, k), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[..., i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride].transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * k * k), (oh, ow)


def col2im(cols, shape, k, stride, pad, out_hw):
    """The adjoint of :func:`im2col`: patch gradients summed back into an NCHW array."""
    n, c, h, w = shape
    oh, ow = out_hw
    cols = cols.reshape(n, oh, ow, c, k, k)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[..., i, j].transpose(0, 3, 1, 2)
    return xp[:, :, pad:pad + h, pad:pad + w]


class Conv2d(Layer):
    """A k x k convolution of NCHW input as one matrix product over im2col patches."""

    def __init__(self, c_in, c_out, k, rng, stride=1, pad=0, bias=True, dtype=np.float32):
        super().__init__()
        self.k, self.stride, self.pad = k, stride, pad
        bound = 1.0 / np.sqrt(c_in * k * k)
        self._param("weight", rng.uniform(-bound, bound, (c_in * k * k, c_out)).astype(dtype))
        b = rng.uniform(-bound, bound, c_out).astype(dtype)   # drawn either way: same weights after it
        if bias:
            self._param("bias", b)

    def forward(self, x):
        self.shape = x.shape
        self.cols, self.out_hw = im2col(x, self.k, self.stride, self.pad)
        y = self.cols @ self.params["weight"]
        if "bias" in self.params:
            y += self.params["bias"]
        n, (oh, ow) = x.shape[0], self.out_hw
        return np.ascontiguousarray(y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2))

    def backward(self, dy):
        dy = dy.transpose(0, 2, 3, 1).reshape(-1, dy.shape[1])   # (N * OH * OW, C_out)
        self.grads["weight"] += self.cols.T @ dy
        if "bias" in self.grads:
            self.grads["bias"] += dy.sum(axis=0)
        return col2im(dy @ self.params["weight"].T, self.shape, self.k, self.stride, self.pad, self.out_hw)


class Sigmoid(Layer):
    def forward(self, x):
        self.y = 1.0 / (1.0 + np.exp(-x))
        return self.y

    def backward(self, dy):
        return dy * self.y * (1.0 - self.y)


class ReLU(Layer):
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask


class Flatten(Layer):
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.shape)


class Sequential(Layer):
    """Layers applied in turn; backward in reverse. Holds no parameters of its own."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self):
        for layer in self.layers:
            layer.train()
        return self

    def eval(self):
        for layer in self.layers:
            layer.eval()
        return self

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of the softmax of ``logits`` and its gradient with respect to them."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(n), labels].mean()
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), labels] -= 1.0
    return float(loss), dlogits / n


class SGD:
    """Plain stochastic gradient descent, ``p -= lr * grad``, on every parameter of ``layers``.

    A layer on the cuda backend keeps its parameters on the device: those are
    updated through a copy to the host and back (small vectors; fine for a demo).
    """

    def __init__(self, layers, lr):
        self.layers, self.lr = list(layers), lr

    def step(self):
        for layer in self.layers:
            for name, p in layer.params.items():
                g = layer.grads[name]
                if isinstance(p, np.ndarray):
                    p -= self.lr * g
                else:
                    p.copy_to_device(p.copy_to_host() - self.lr * g.copy_to_host())
