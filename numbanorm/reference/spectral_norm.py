"""Reference spectral norm (Miyato et al. 2018): ``w / sigma``, sigma from power iteration.

W is ``w`` reshaped to ``(w.shape[axis], -1)``. Each iteration, as PyTorch's:
``v = normalize(W^T u)``, ``u = normalize(W v)``; then ``sigma = u^T W v``.
Gradients hold u and v constant: ``dW = dy / sigma - <dy, W> / sigma**2 * u v^T``.
"""
import numpy as np

from .._host import matrix_view, power_iteration


def forward(w, p):
    W, undo = matrix_view(w.astype(np.float64), p.axis)
    u, v, sigma = power_iteration(lambda v: W @ v, lambda u: W.T @ u, p.u.astype(np.float64), p.n_power_iterations,
                                  p.eps, p.training)
    if p.training:
        p.u[...] = u
    clamped = max(sigma, p.eps)  # a zero weight gives zeros, not NaN
    y = undo(W / clamped)
    return (y.astype(p.cdtype), None, np.asarray(1.0 / clamped, p.cdtype),
            {"W": W, "u": u, "v": v, "sigma": sigma})


def backward(dy, cache):
    p, s = cache.params, cache.saved
    dY, undo = matrix_view(dy.astype(np.float64), p["axis"])
    W, u, v, sigma = s["W"], s["u"], s["v"], s["sigma"]
    if sigma > p["eps"]:
        dW = dY / sigma - (np.sum(dY * W) / sigma**2) * np.outer(u, v)
    else:  # sigma clamped to eps: a constant
        dW = dY / p["eps"]
    return (undo(dW).astype(p["cdtype"]),)
