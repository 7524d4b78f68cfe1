"""The base class every layer derives from: params, grads, buffers, modes, state dicts, placement."""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .. import _validate as v
from .._dispatch import _check_name
from . import _arrays

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What ``load_state_dict(..., strict=False)`` left out: PyTorch's named tuple."


def float_dtype(dtype):
    """``dtype`` as a NumPy dtype; TypeError unless float16, float32 or float64."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy float dtype, got {dtype!r}") from None
    if dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"dtype {dtype} is not supported; layers hold float16, float32 or float64")
    return dtype


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def axis_arg(axis):
    """A channel axis: an integer (its range is checked against each input)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer (the channel axis), got {axis!r}")
    return int(axis)


def momentum_arg(momentum):
    """PyTorch's ``momentum``: a fraction, or None for the cumulative average."""
    return None if momentum is None else v.fraction("momentum", momentum)


def _is_counter(a):
    return isinstance(a, np.ndarray) and a.dtype.kind in "iu"


class Module:
    """Base class of the layers: parameters, gradients, buffers, modes, state dicts and placement.

    A layer is a thin stateful wrapper over a functional op. A subclass registers
    its arrays in ``__init__`` with :meth:`_param` and :meth:`_buffer`, and
    implements two methods:

    - ``_forward(*inputs) -> (y, cache)``: call the op's ``*_forward`` with the
      layer's arrays;
    - ``_backward(dy, cache) -> (dx, grads)``: call the op's ``*_backward``;
      ``grads`` maps parameter names to their gradients (None for absent ones).

    Everything else (gradient accumulation, modes, state dicts, ``to``) lives here.

    Parameters
    ----------
    dtype : float dtype
        The dtype of parameters, gradients and float buffers (float32 by default).
    backend : {None, "numpy", "cpu", "cuda"}
        The backend of the functional calls; None follows the arrays (and
        ``with numbanorm.backend(...)``), as the functional API does. With
        ``"cuda"`` the layer's arrays are made on the device.

    Attributes
    ----------
    params : dict of str to array
        The trainable arrays, with PyTorch's names (``weight``, ``bias``, ...).
        Update them in place (``p -= lr * g``) or replace them with arrays of the
        same shape.
    grads : dict of str to array
        One gradient per parameter, same shape; :meth:`backward` adds to them
        until :meth:`zero_grad`.
    buffers : dict of str to array
        State that is not trained (``running_mean``, ``running_var``,
        ``num_batches_tracked``, ...). Integer counters are 0-d int64 host arrays,
        as PyTorch's, wherever the layer lives.
    training : bool
        Training mode (the default) or eval mode; see :meth:`train`.
    backend : str or None
        As given, or as last set by :meth:`to`.
    dtype : numpy.dtype
    """

    _repr_fields = ()

    def __init__(self, *, dtype=np.float32, backend=None):
        self.dtype = float_dtype(dtype)
        self.backend = None if backend is None else _check_name(backend, type(self).__name__)
        if self.backend == "cuda":
            _arrays.require_cuda()
        self.training = True
        self.params, self.grads, self.buffers = {}, {}, {}
        self._cache = None

    # ------------------------------------------------------------------ registration

    def _param(self, name, value):
        """Register the parameter ``name`` (a copy of ``value`` in the layer's dtype) and its zero grad."""
        value = np.array(_arrays.to_host(value), dtype=self.dtype)
        self.params[name] = self._place(value)
        self.grads[name] = self._place(np.zeros_like(value))

    def _buffer(self, name, value):
        """Register a buffer; float ones follow the layer to the device, integer counters stay on the host."""
        self.buffers[name] = value if _is_counter(value) else self._place(np.array(value, self.dtype))

    def _place(self, a):
        return _arrays.to_device(a) if self.backend == "cuda" else a

    # ------------------------------------------------------------------ forward and backward

    def forward(self, *inputs):
        """The layer's output for ``inputs``; keeps what :meth:`backward` needs."""
        y, cache = self._forward(*inputs)
        self._cache = cache
        return y

    def __call__(self, *inputs):
        """Same as :meth:`forward`."""
        return self.forward(*inputs)

    def backward(self, dy):
        """Gradient with respect to the input of the last :meth:`forward`; adds the
        parameters' gradients into :attr:`grads`.

        Parameters
        ----------
        dy : array
            Gradient of the loss with respect to the last output, of its shape.

        Returns
        -------
        dx : array or None
            Gradient with respect to the input (None for weight wrappers, which have none).
        """
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward() first: "
                               "it differentiates the last forward call (after to(), run forward again)")
        dx, grads = self._backward(dy, self._cache)
        for name, g in grads.items():
            if g is not None and name in self.grads:
                _arrays.accumulate(self.grads[name], g)
        return dx

    def zero_grad(self):
        """Set every gradient to zero, in place."""
        for g in self.grads.values():
            _arrays.zero(g)

    def _forward(self, *inputs):
        raise NotImplementedError

    def _backward(self, dy, cache):
        raise NotImplementedError

    # ------------------------------------------------------------------ modes

    def train(self, mode=True):
        """Set training mode (``mode=True``) or eval mode; returns ``self``.

        In eval mode, layers with running statistics normalize with them and do
        not update them; SpectralNorm runs no power iteration.
        """
        self.training = bool(mode)
        return self

    def eval(self):
        """Set eval mode; returns ``self``. Same as ``train(False)``."""
        return self.train(False)

    # ------------------------------------------------------------------ state

    def _state(self):
        return {**self.params, **self.buffers}

    def state_dict(self):
        """A snapshot of the parameters and buffers as NumPy arrays, with PyTorch's key names.

        Returns
        -------
        dict of str to numpy.ndarray
            Parameters then buffers, in PyTorch's order; copies, so later
            training does not change them. Loadable by :meth:`load_state_dict`
            and by PyTorch after ``torch.from_numpy``.
        """
        return {name: _arrays.host_copy(a) for name, a in self._state().items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters and buffers from ``state_dict`` (PyTorch's key names), in place.

        Every key, shape and dtype is checked before anything is written, so a
        failed load changes nothing. Values may be NumPy arrays, device arrays or
        anything ``numpy.asarray`` reads (e.g. ``{k: v.numpy() for k, v in
        module.state_dict().items()}`` from PyTorch); they are cast to the
        layer's dtype.

        Parameters
        ----------
        state_dict : mapping of str to array
        strict : bool
            Require exactly the layer's keys (the default); else load the keys
            present and report the rest.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, both empty after a strict load.

        Raises
        ------
        ValueError
            For missing or unexpected keys (when ``strict``) and shape mismatches.
        TypeError
            For values that are not real numbers, or counters that are not integers.
        """
        name = type(self).__name__
        target = self._state()
        missing = [k for k in target if k not in state_dict]
        unexpected = [k for k in state_dict if k not in target]
        if strict and (missing or unexpected):
            raise ValueError(f"{name}.load_state_dict: missing keys {missing}, unexpected keys {unexpected} "
                             f"(expected exactly {list(target)}; strict=False loads the keys present)")
        values = {}
        for key, dst in target.items():
            if key not in state_dict:
                continue
            try:
                value = _arrays.to_host(state_dict[key])
            except Exception as exc:
                raise TypeError(f"{name}.load_state_dict: {key!r} cannot be read as an array: {exc}") from None
            kinds = "iu" if _is_counter(dst) else "fiu"
            if value.dtype.kind not in kinds:
                wanted = "an integer" if kinds == "iu" else "a real"
                raise TypeError(f"{name}.load_state_dict: {key!r} has dtype {value.dtype}; expected {wanted} dtype")
            fits = value.size == 1 if _is_counter(dst) else tuple(value.shape) == tuple(dst.shape)
            if not fits:
                raise ValueError(f"{name}.load_state_dict: size mismatch for {key!r}: the state dict has "
                                 f"shape {tuple(value.shape)}, the layer {tuple(dst.shape)}")
            values[key] = value
        for key, value in values.items():
            _arrays.assign(target[key], value)
        return IncompatibleKeys(missing, unexpected)

    def to(self, backend):
        """Move parameters, gradients and float buffers to ``backend``'s memory; returns ``self``.

        ``"cuda"`` makes Numba device arrays, ``"numpy"`` and ``"cpu"`` NumPy
        arrays (arrays already in place are kept, not copied). ``backend``
        becomes the layer's backend for later calls. Integer counters stay on
        the host. The cache of the last forward is dropped.

        Parameters
        ----------
        backend : {"numpy", "cpu", "cuda"}

        Returns
        -------
        self
        """
        name = _check_name(backend, f"{type(self).__name__}.to")
        if name == "cuda":
            _arrays.require_cuda()
            move = _arrays.to_device
        else:
            move = _arrays.to_host
        for arrays in (self.params, self.grads, self.buffers):
            for key, a in arrays.items():
                if not _is_counter(a):
                    arrays[key] = move(a)
        self.backend = name
        self._cache = None
        return self

    def __repr__(self):
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._repr_fields)
        return f"{type(self).__name__}({fields})"
