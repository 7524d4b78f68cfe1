"""Weight reparametrizations: weight norm and spectral norm, wrapping a weight array.

Their ``forward()`` takes no input and returns the weight to use (e.g. in a
linear layer); ``backward(dw)`` takes the gradient with respect to that weight
and adds the gradients of the wrapped parameters into ``grads``.
"""
from __future__ import annotations

import operator

import numpy as np

from .. import _validate as v
from .. import functional as F
from . import _arrays
from ._module import Module, positive_int


def _weight_arg(weight, dtype, backend):
    """The weight as a host array, its dtype (``dtype`` or the weight's own) and the backend of storage."""
    if backend is None and _arrays.on_device(weight):
        backend = "cuda"
    host = _arrays.to_host(weight)
    if host.ndim < 1:
        raise ValueError(f"weight must have at least one dimension, got shape {tuple(host.shape)}")
    if dtype is None:
        dtype = v.float_dtype("weight", host)
    return host, dtype, backend


def _dim_arg(dim, ndim, allow_none):
    if dim is None and allow_none:
        return None
    try:
        dim = operator.index(dim)
    except TypeError:
        raise TypeError(f"dim must be an integer{' or None' if allow_none else ''}, got {dim!r}") from None
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim={dim} is out of range for a weight with {ndim} dimensions")
    return dim % ndim


class WeightNorm(Module):
    """Weight normalization (Salimans & Kingma 2016) of a weight: ``w = g * v / ||v||``.

    Holds PyTorch's parameters ``{name}_g`` (the magnitudes, PyTorch's keepdims
    shape) and ``{name}_v`` (the direction), initialized so that ``forward()``
    returns ``weight``. The norm runs over every dimension except ``dim``.

    Parameters
    ----------
    weight : array
        The weight to reparametrize (host or device array); copied.
    name : str
        The parameter's name: the keys are ``name + "_g"`` and ``name + "_v"``,
        as ``torch.nn.utils.weight_norm(module, name)`` names them.
    dim : int or None
        The dimension that keeps one magnitude per slice (0: per output unit);
        None: one magnitude for the whole weight.
    log_scale : bool
        Keep ``log(g)`` in ``{name}_g`` instead of ``g`` (the exponential
        parameterisation).
    eps : float
        Added to the squared norms (0, the default, matches PyTorch).
    dtype : float dtype or None
        dtype of the parameters; None keeps the weight's.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays (a device
        ``weight`` keeps the parameters on the device).

    Examples
    --------
    >>> wn = WeightNorm(np.random.randn(4, 3))
    >>> w = wn()                          # the weight, to use in a linear layer
    >>> wn.backward(dw)                   # doctest: +SKIP
    >>> wn.grads["weight_g"], wn.grads["weight_v"]  # doctest: +SKIP
    """

    _repr_fields = ("name", "dim", "log_scale", "eps")

    def __init__(self, weight, name="weight", dim=0, *, log_scale=False, eps=0.0, dtype=None, backend=None):
        weight, dtype, backend = _weight_arg(weight, dtype, backend)
        super().__init__(dtype=dtype, backend=backend)
        self.name = str(name)
        self.dim = _dim_arg(dim, weight.ndim, allow_none=True)
        self.log_scale = bool(log_scale)
        self.eps = v.at_least("eps", eps, 0)
        w = weight.astype(np.float64)
        if self.dim is None:
            g = np.sqrt(np.sum(w * w) + self.eps)
        else:
            others = tuple(i for i in range(w.ndim) if i != self.dim)
            g = np.sqrt(np.sum(w * w, axis=others, keepdims=True) + self.eps)
        with np.errstate(divide="ignore"):
            self._param(self.name + "_g", np.log(g) if self.log_scale else g)
        self._param(self.name + "_v", weight)

    def _forward(self):
        return F.weight_norm_forward(self.params[self.name + "_v"], self.params[self.name + "_g"],
                                     axis=self.dim, log_scale=self.log_scale, eps=self.eps, backend=self.backend)

    def _backward(self, dw, cache):
        dv, dg = F.weight_norm_backward(dw, cache)
        return None, {self.name + "_v": dv, self.name + "_g": dg}


class SpectralNorm(Module):
    """Spectral normalization (Miyato et al. 2018) of a weight: ``w / sigma(W)``.

    Holds PyTorch's parameter ``{name}_orig`` (the weight) and buffers
    ``{name}_u`` and ``{name}_v`` (the singular vector estimates, random unit
    vectors at first). ``W`` is the weight reshaped to ``(w.shape[dim], -1)``.
    In training mode each ``forward()`` runs ``n_power_iterations`` power
    iterations, updating ``u`` and ``v``; in eval mode none runs and nothing
    changes (see :func:`numbanorm.spectral_norm`). Gradients hold ``u`` and
    ``v`` constant, as PyTorch does.

    Parameters
    ----------
    weight : array
        The weight to normalize (host or device array); copied.
    name : str
        The keys are ``name + "_orig"``, ``name + "_u"`` and ``name + "_v"``,
        as ``torch.nn.utils.spectral_norm(module, name)`` names them.
    n_power_iterations : int
        Power iterations per training forward.
    eps : float
        Floor of the vector norms and of sigma.
    dim : int
        The dimension of the weight that becomes the rows of ``W`` (0 for
        linear and conv weights; 1 for transposed convolutions, as PyTorch).
    rng : numpy.random.Generator, int or None
        Source of the random initial ``u`` and ``v``.
    dtype : float dtype or None
        dtype of the parameter and buffers; None keeps the weight's.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.
    """

    _repr_fields = ("name", "n_power_iterations", "eps", "dim")

    def __init__(self, weight, name="weight", n_power_iterations=1, eps=1e-12, dim=0, *, rng=None,
                 dtype=None, backend=None):
        weight, dtype, backend = _weight_arg(weight, dtype, backend)
        super().__init__(dtype=dtype, backend=backend)
        self.name = str(name)
        self.n_power_iterations = positive_int("n_power_iterations", n_power_iterations)
        self.eps = v.positive("eps", eps)
        self.dim = _dim_arg(dim, weight.ndim, allow_none=False)
        rng = np.random.default_rng(rng)
        rows = weight.shape[self.dim]
        cols = weight.size // rows if rows else 0

        def unit(n):
            a = rng.standard_normal(n)
            return a / max(float(np.sqrt(a @ a)), self.eps)

        self._param(self.name + "_orig", weight)
        self._buffer(self.name + "_u", unit(rows))
        self._buffer(self.name + "_v", unit(cols))

    def _forward(self):
        y, cache = F.spectral_norm_forward(self.params[self.name + "_orig"], self.buffers[self.name + "_u"],
                                           n_power_iterations=self.n_power_iterations, eps=self.eps,
                                           axis=self.dim, training=self.training, backend=self.backend)
        v_now = cache.saved.get("v")  # the right singular vector estimate the forward used
        if self.training and v_now is not None:
            _arrays.assign(self.buffers[self.name + "_v"], v_now)
        return y, cache

    def _backward(self, dw, cache):
        (dweight,) = F.spectral_norm_backward(dw, cache)
        return None, {self.name + "_orig": dweight}
