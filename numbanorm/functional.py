"""The public operations: ``OP``, ``OP_forward`` and ``OP_backward`` for every op.

Each function validates its arguments (see :mod:`numbanorm._validate`) before
anything is computed or written, picks the backend (see
:mod:`numbanorm._dispatch`) and calls that backend's implementation. A forward
called again with the same signature skips the checks it passed (the thin path,
below). float16 input computes in float32 and is returned as float16. Semantics
follow PyTorch.
"""
from __future__ import annotations

import contextvars
import functools
import math
from types import SimpleNamespace

import numpy as np

from . import _validate as v
from ._dispatch import Cache, as_kind, get_backend, get_impl, resolve_backend

__all__ = [
    "batch_norm", "batch_norm_forward", "batch_norm_backward",
    "layer_norm", "layer_norm_forward", "layer_norm_backward",
    "rms_norm", "rms_norm_forward", "rms_norm_backward",
    "group_norm", "group_norm_forward", "group_norm_backward",
    "instance_norm", "instance_norm_forward", "instance_norm_backward",
    "weight_norm", "weight_norm_forward", "weight_norm_backward",
    "spectral_norm", "spectral_norm_forward", "spectral_norm_backward",
    "batch_renorm", "batch_renorm_forward", "batch_renorm_backward",
    "local_response_norm", "local_response_norm_forward", "local_response_norm_backward",
]


# ----------------------------------------------------------------------------- plumbing

def _in_compute_dtype(a, dtype):
    """``a`` cast to the compute dtype (host arrays only; None passes)."""
    if isinstance(a, np.ndarray) and a.dtype != dtype:
        return a.astype(dtype)
    return a


def _as_dtype(a, dtype):
    if a is None or a.dtype == dtype:
        return a
    return a.astype(dtype)


def _momentum_factor(momentum, num_batches_tracked, updating):
    """The running-average factor; ``momentum=None`` is the cumulative average.

    Increments ``num_batches_tracked`` when statistics are updated, as PyTorch's
    modules do. Only called once every check has passed.
    """
    if updating and num_batches_tracked is not None:
        num_batches_tracked += 1
    if momentum is not None:
        return momentum
    return 1.0 / float(num_batches_tracked.reshape(-1)[0]) if updating else 0.0


def _check_momentum(momentum, num_batches_tracked, updating):
    if momentum is None:
        if updating and num_batches_tracked is None:
            raise ValueError("momentum=None (the cumulative average) needs num_batches_tracked, "
                             "the one-element counter it divides by")
        return None
    return v.fraction("momentum", momentum)


def _backend_for(x, backend, *arrays):
    """The backend that runs on ``x``; TypeError for a device array on a host backend."""
    name = resolve_backend(backend, x, *arrays)
    if name != "cuda" and not isinstance(x, np.ndarray):
        raise TypeError(f"the {name!r} backend takes NumPy arrays, and x is a device array: "
                        "use the 'cuda' backend, or copy x to the host first")
    return name


def _run_forward(op, x, p, backend, *arrays):
    name = _backend_for(x, backend, *arrays)
    impl = get_impl(op, name)
    recording = _recording.get()
    if recording is not None:  # a planned call on its full path: keep what it found for the next
        recording.append((op, name, impl, dict(vars(p))))
    return _call_backend(op, name, impl, x, p)


def _call_backend(op, name, impl, x, p):
    if "momentum" in vars(p):  # ops with running statistics
        p.factor = _momentum_factor(p.momentum, p.num_batches_tracked, p.update_running)
    return _forward_result(op, name, p, *impl.forward(_in_compute_dtype(x, p.cdtype), p))


# ----------------------------------------------------------------------------- the thin path
#
# A training loop calls each op with the same shapes, dtypes and options every step.
# Everything the checks above find depends on those alone (the arrays' shapes, dtypes
# and writeability, the scalar arguments' types and values, the backend in force), so a
# forward keeps what its full path found, per call signature, and a later call with the
# same signature binds its arrays to it and goes straight to the backend. Nothing that
# depends on array contents is kept: a call whose arguments differ in any way the
# checks look at has another signature, and takes the full path, errors included.

_recording = contextvars.ContextVar("numbanorm_plan_recording", default=None)
_MAX_PLANS = 256  # per op; a loop over ever new shapes starts afresh past this


class _Unplannable(Exception):
    """An argument the thin path does not key (device arrays, lists): the call takes the full path."""


# The types of the arguments a signature keys by value (arrays: by shape, dtype and
# writeability; tuples and device arrays: see _other_key). The types are part of the key
# (True, 1 and 1.0 are equal, but not to the checks).
_BY_VALUE = frozenset((type(None), bool, int, float, str, np.float16, np.float32, np.float64, np.int32, np.int64,
                       np.bool_))


def _signature(args, kwargs):
    """The key of a call: the backend in force, the keywords given, every argument's type, and
    its shape, dtype and writeability (arrays) or value (the rest)."""
    values = (*args, *kwargs.values())
    types = tuple(map(type, values))
    parts = tuple([(a.shape, a.dtype, a.flags.writeable) if t is np.ndarray else a if t in _BY_VALUE
                   else _other_key(a, t) for a, t in zip(values, types)])
    return get_backend(), tuple(kwargs), types, parts


def _other_key(a, t):
    """Tuples (axes) by value when they hold plain ints; [cuda] Numba's (and the simulator's)
    device arrays by shape and dtype. Anything else (lists, CuPy arrays and torch tensors, which
    the full path makes views of and checks the read-only flag of) is not keyed."""
    if t is tuple:
        return _tuple_key(a)
    if getattr(t, "__cuda_ndarray__", False):
        return a.shape, a.dtype
    raise _Unplannable


def _tuple_key(a):
    """A tuple argument (axes) by value, when it holds plain ints only."""
    if all(type(e) is int for e in a):
        return a
    raise _Unplannable


class _Plan:
    """What a forward's full path found for one call signature, and how to bind a new call's arrays.

    ``arrays`` lists, per field of the validated parameters that holds an array, the
    argument it came from (a position or a keyword) and whether it was cast to the
    compute dtype; every other field is a constant of the signature.
    """

    __slots__ = ("op", "name", "impl", "fields", "arrays")

    def __init__(self, op, name, impl, fields, arrays):
        self.op, self.name, self.impl, self.fields, self.arrays = op, name, impl, fields, arrays

    @classmethod
    def make(cls, recorded, args, kwargs):
        """A plan from a full call's record, or None when a field's array has no argument to come from."""
        op, name, impl, fields = recorded
        given = list(enumerate(args)) + list(kwargs.items())
        constants, arrays = {}, []
        for field, value in fields.items():
            if field == "factor":  # computed per call (it may move num_batches_tracked)
                continue
            if not (isinstance(value, np.ndarray) or getattr(value, "__cuda_ndarray__", False)):
                constants[field] = value
                continue
            # (the keyword of the field's name first: the same array may be passed twice)
            where = field if kwargs.get(field) is value else next((w for w, a in given if a is value), None)
            cast = where is None and type(kwargs.get(field)) is np.ndarray and value.dtype == fields["cdtype"]
            if cast:
                where = field
            if where is None:
                return None
            arrays.append((field, where, cast))
        if not any(field == "like" for field, _, _ in arrays):  # x itself: the call's input
            return None
        return cls(op, name, impl, constants, tuple(arrays))

    def __call__(self, args, kwargs):
        fields = dict(self.fields)
        cdtype = fields["cdtype"]
        for field, where, cast in self.arrays:
            a = args[where] if type(where) is int else kwargs[where]
            fields[field] = _in_compute_dtype(a, cdtype) if cast else a
        return _call_backend(self.op, self.name, self.impl, fields["like"], SimpleNamespace(**fields))


def _planned(forward):
    """Decorator of a public ``OP_forward``: calls with a signature seen before take the thin path."""
    plans = {}

    @functools.wraps(forward)
    def planned(*args, **kwargs):
        try:
            key = _signature(args, kwargs)
            plan = plans.get(key)
        except (_Unplannable, TypeError):  # (TypeError: an unhashable scalar)
            return forward(*args, **kwargs)
        if plan is not None:
            return plan(args, kwargs)
        token = _recording.set([])
        try:
            result = forward(*args, **kwargs)
            recorded = _recording.get()
        finally:
            _recording.reset(token)
        if len(recorded) == 1:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = _Plan.make(recorded[0], args, kwargs)
        return result

    planned.plans = plans  # (for tests and benchmarks)
    return planned


def _forward_result(op, name, p, y, mean, rstd, saved):
    """``(y, cache)`` from a backend's forward: y in the caller's dtype and kind of array."""
    y = _as_dtype(y, p.dtype)
    if name == "cuda":  # [cuda] results come back as the caller's kind of array (CuPy, torch)
        y, mean, rstd = (as_kind(a, p.like) for a in (y, mean, rstd))
    return y, Cache(op, name, mean, rstd, vars(p), saved)


def _run_backward(op, dy, cache, backend, params):
    """Check ``dy`` against ``cache``, run the backend's backward, cast grads back."""
    like = dy  # [cuda] the caller's kind of array, for the results
    dy = _backward_input(op, dy, cache, backend)
    grads = get_impl(op, cache.backend).backward(dy, cache)
    return _backward_result(grads, cache, like, params)


def _check_cache(op, cache):
    if not isinstance(cache, Cache) or cache.op != op:
        got = cache.op if isinstance(cache, Cache) else type(cache).__name__
        raise TypeError(f"{op}_backward needs the cache returned by {op}_forward, got {got}")


def _backward_input(op, dy, cache, backend):
    """``dy`` checked against ``cache`` (and ``backend``), in the compute dtype."""
    _check_cache(op, cache)
    p = cache.params
    dy = v.as_array("dy", dy)
    v.same_shape("dy", dy, p["shape"])
    # The cache holds the forward backend's private arrays: backward runs there.
    if backend is not None and resolve_backend(backend) != cache.backend:
        raise ValueError(f"this cache was made by the {cache.backend!r} backend; its backward "
                         f"cannot run on {backend!r}")
    return _in_compute_dtype(dy, p["cdtype"])


def _backward_result(grads, cache, like, params):
    """A backend's gradients cast to the dtypes (and [cuda] the kind of array) of the arguments."""
    p = cache.params
    dtypes = [p["dtype"]] + [None if p[k] is None else p[k + "_dtype"] for k in params]
    grads = tuple(None if g is None else _as_dtype(g, t) for g, t in zip(grads, dtypes))
    if cache.backend == "cuda":  # [cuda]
        grads = tuple(as_kind(g, like) for g in grads)
    return grads


def _affine(p, shape, what, names=("weight", "bias")):
    """Validate the affine parameters ``names`` of ``p`` and cast them to the compute dtype."""
    fields = vars(p)
    for name in names:
        a = fields[name]
        if a is None:
            fields[name + "_dtype"] = None
            continue
        a = v.param(name, a, shape, what)
        fields[name + "_dtype"] = a.dtype
        fields[name] = _in_compute_dtype(a, p.cdtype)


def _start(x, op, min_ndim, what):
    like = x  # [cuda] the caller's kind of array, for the results
    x = v.as_array("x", x)
    v.min_ndim(x, min_ndim, op, what)
    dtype = x.dtype
    return x, SimpleNamespace(shape=tuple(x.shape), dtype=dtype, cdtype=v.compute_dtype(dtype), like=like)


def _running(p, running_mean, running_var, shape, what, updating):
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    check = v.buffer if updating else v.param
    p.running_mean = check("running_mean", running_mean, shape, what)
    p.running_var = check("running_var", running_var, shape, what)


# ----------------------------------------------------------------------------- batch_norm

def _batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                     num_batches_tracked, op="batch_norm", check_count=True):
    """Validated ``(x, p)`` of batch norm; ``check_count=False`` leaves the check that training
    has more than one value per channel to the caller (SyncBatchNorm checks the total over ranks)."""
    x, p = _start(x, op, 2, "(N, C, ...) input")
    p.axis = v.channel_axis(axis, x.ndim)
    channels = x.shape[p.axis]
    what = lambda: f"one value per channel along axis {p.axis}"  # noqa: E731 (formatted on error only)
    p.weight, p.bias = weight, bias
    _affine(p, (channels,), what)
    p.training = bool(training)
    p.update_running = p.training and running_mean is not None
    _running(p, running_mean, running_var, (channels,), what, p.update_running)
    if not p.training and p.running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    p.eps = v.positive("eps", eps)
    p.num_batches_tracked = v.counter("num_batches_tracked", num_batches_tracked)
    p.momentum = _check_momentum(momentum, p.num_batches_tracked, p.update_running)
    if p.training and check_count:
        v.more_than_one(x.size // max(channels, 1) if channels else 0, x.shape)
    return x, p


@_planned
def batch_norm_forward(x, *, running_mean=None, running_var=None, weight=None, bias=None,
                       training=False, momentum=0.1, eps=1e-5, axis=1, num_batches_tracked=None,
                       backend=None):
    """Batch normalization that also returns the cache for :func:`batch_norm_backward`.

    See :func:`batch_norm` for the arguments.

    Returns
    -------
    y : array
        The normalized input, of the kind, shape and dtype of ``x``.
    cache : Cache
        References to what the backward needs, with the per-channel ``mean`` and
        ``rstd`` used.
    """
    x, p = _batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps,
                            axis, num_batches_tracked)
    return _run_forward("batch_norm", x, p, backend, weight, bias, running_mean, running_var)


def batch_norm(x, **kwargs):
    """Batch normalization over every axis except the channel axis.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel. When
    training, mean and (biased) var are the batch's, and the running statistics
    are updated in place: ``running = (1 - momentum) * running + momentum * stat``
    with the unbiased variance ``var * n / (n - 1)``. In eval the running
    statistics are used and nothing is written.

    Parameters
    ----------
    x : array, shape (N, C, ...) or channels-last with ``axis``
        Float16, float32 or float64 input; axis 0 is the batch axis.
    running_mean, running_var : array of shape (C,), optional
        Running statistics; updated in place when ``training``; required in eval.
    weight, bias : array of shape (C,), optional
        Affine parameters (identity when absent).
    training : bool
        Normalize with the batch statistics (and update the running ones).
    momentum : float or None
        Running-average factor; None is the cumulative average and needs
        ``num_batches_tracked``.
    eps : float
        Added to the variance; must be positive.
    axis : int
        The channel axis (1 for NCHW, -1 for channels-last).
    num_batches_tracked : integer array of one element, optional
        Incremented in place each training call with running statistics.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.

    Raises
    ------
    TypeError
        For non-float arrays.
    ValueError
        For mismatched shapes, a bad axis, ``eps <= 0``, a single value per
        channel while training, or missing running statistics in eval.
    """
    return batch_norm_forward(x, **kwargs)[0]


def batch_norm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`batch_norm_forward`.

    Parameters
    ----------
    dy : array
        Gradient of the loss with respect to ``y``.
    cache : Cache
        The cache returned by :func:`batch_norm_forward`; it is not modified.
    backend : str, optional
        The backend that ran the forward (the default; another raises ValueError).

    Returns
    -------
    dx, dweight, dbias : array or None
        ``dweight``/``dbias`` are None when the forward had no weight/bias.
    """
    return _run_backward("batch_norm", dy, cache, backend, ("weight", "bias"))


# ----------------------------------------------------------------------------- layer_norm

def _layer_norm_args(x, weight, bias, axis, eps, op, names):
    x, p = _start(x, op, 1, "an input with at least one axis")
    p.axes = v.axes(axis, x.ndim)
    p.normalized_shape = tuple(x.shape[a] for a in p.axes)
    p.weight, p.bias = weight, bias
    _affine(p, p.normalized_shape, lambda: f"the shape of x over axes {p.axes}", names)
    if eps is None:
        eps = float(np.finfo(p.dtype).eps)
    p.eps = v.positive("eps", eps)
    return x, p


@_planned
def layer_norm_forward(x, *, weight=None, bias=None, axis=-1, eps=1e-5, backend=None):
    """Layer normalization that also returns the cache for :func:`layer_norm_backward`.

    See :func:`layer_norm` for the arguments. ``cache.mean`` and ``cache.rstd``
    have the shape of ``x`` over the axes that are not normalized.
    """
    x, p = _layer_norm_args(x, weight, bias, axis, eps, "layer_norm", ("weight", "bias"))
    return _run_forward("layer_norm", x, p, backend, weight, bias)


def layer_norm(x, **kwargs):
    """Layer normalization over any set of axes.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with mean and biased
    variance over ``axis`` for each index of the other axes.

    Parameters
    ----------
    x : array
        Float16, float32 or float64 input.
    weight, bias : array, optional
        Shape of ``x`` over the normalized axes, e.g. ``(C,)`` for ``axis=1`` of NCHW.
    axis : int or tuple of int
        The normalized axes (default the last); any axes, in any layout.
    eps : float
        Added to the variance; must be positive.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.
    """
    return layer_norm_forward(x, **kwargs)[0]


def layer_norm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`layer_norm_forward`: ``(dx, dweight, dbias)``, None for absent params."""
    return _run_backward("layer_norm", dy, cache, backend, ("weight", "bias"))


# ----------------------------------------------------------------------------- rms_norm

@_planned
def rms_norm_forward(x, *, weight=None, axis=-1, eps=None, backend=None):
    """RMS normalization that also returns the cache for :func:`rms_norm_backward`.

    See :func:`rms_norm` for the arguments.
    """
    x, p = _layer_norm_args(x, weight, None, axis, eps, "rms_norm", ("weight",))
    return _run_forward("rms_norm", x, p, backend, weight)


def rms_norm(x, **kwargs):
    """Root-mean-square normalization: ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    x : array
        Float16, float32 or float64 input.
    weight : array, optional
        Shape of ``x`` over the normalized axes.
    axis : int or tuple of int
        The normalized axes (default the last).
    eps : float, optional
        Added to the mean square; None is ``finfo(x.dtype).eps``, as in PyTorch.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.
    """
    return rms_norm_forward(x, **kwargs)[0]


def rms_norm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`rms_norm_forward`: ``(dx, dweight)``, None for an absent weight."""
    return _run_backward("rms_norm", dy, cache, backend, ("weight",))


# ----------------------------------------------------------------------------- group_norm

@_planned
def group_norm_forward(x, num_groups, *, weight=None, bias=None, axis=1, eps=1e-5, backend=None):
    """Group normalization that also returns the cache for :func:`group_norm_backward`.

    See :func:`group_norm` for the arguments. ``cache.mean`` and ``cache.rstd``
    have shape ``(N, num_groups)``.
    """
    x, p = _start(x, "group_norm", 2, "(N, C, ...) input")
    p.axis = v.channel_axis(axis, x.ndim)
    channels = x.shape[p.axis]
    if type(num_groups) is not int and (isinstance(num_groups, bool) or not isinstance(num_groups, np.integer)) \
            or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if channels % num_groups:
        raise ValueError("Expected number of channels in input to be divisible by num_groups, "
                         f"but got input of shape {tuple(x.shape)} and num_groups={num_groups}")
    p.num_groups = int(num_groups)
    p.weight, p.bias = weight, bias
    _affine(p, (channels,), lambda: f"one value per channel along axis {p.axis}")
    p.eps = v.positive("eps", eps)
    return _run_forward("group_norm", x, p, backend, weight, bias)


def group_norm(x, num_groups, **kwargs):
    """Group normalization: statistics over each group of channels and all spatial axes.

    Parameters
    ----------
    x : array, shape (N, C, ...) or channels-last with ``axis``
        Float16, float32 or float64 input.
    num_groups : int
        Number of groups; must divide the number of channels.
    weight, bias : array of shape (C,), optional
        Per-channel affine parameters.
    axis : int
        The channel axis.
    eps : float
        Added to the variance; must be positive.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.
    """
    return group_norm_forward(x, num_groups, **kwargs)[0]


def group_norm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`group_norm_forward`: ``(dx, dweight, dbias)``, None for absent params."""
    return _run_backward("group_norm", dy, cache, backend, ("weight", "bias"))


# ----------------------------------------------------------------------------- instance_norm

@_planned
def instance_norm_forward(x, *, weight=None, bias=None, running_mean=None, running_var=None,
                          use_input_stats=True, momentum=0.1, eps=1e-5, axis=1,
                          num_batches_tracked=None, backend=None):
    """Instance normalization that also returns the cache for :func:`instance_norm_backward`.

    See :func:`instance_norm` for the arguments. ``cache.mean`` and ``cache.rstd``
    have shape ``(N, C)`` with input statistics, ``(C,)`` with running ones.
    """
    x, p = _start(x, "instance_norm", 2, "(N, C, ...) input")
    p.axis = v.channel_axis(axis, x.ndim)
    channels = x.shape[p.axis]
    what = lambda: f"one value per channel along axis {p.axis}"  # noqa: E731 (formatted on error only)
    p.weight, p.bias = weight, bias
    _affine(p, (channels,), what)
    p.use_input_stats = bool(use_input_stats)
    p.update_running = p.use_input_stats and running_mean is not None
    _running(p, running_mean, running_var, (channels,), what, p.update_running)
    if not p.use_input_stats and p.running_mean is None:
        raise ValueError("running_mean and running_var are required when use_input_stats=False")
    p.eps = v.positive("eps", eps)
    p.num_batches_tracked = v.counter("num_batches_tracked", num_batches_tracked)
    p.momentum = _check_momentum(momentum, p.num_batches_tracked, p.update_running)
    if p.use_input_stats:
        spatial = math.prod(s for i, s in enumerate(x.shape) if i not in (0, p.axis))
        v.more_than_one(spatial, x.shape, "spatial element")
    return _run_forward("instance_norm", x, p, backend, weight, bias, running_mean, running_var)


def instance_norm(x, **kwargs):
    """Instance normalization: statistics per sample and channel over the spatial axes.

    Parameters
    ----------
    x : array, shape (N, C, ...) or channels-last with ``axis``
        Float16, float32 or float64 input.
    weight, bias : array of shape (C,), optional
        Per-channel affine parameters.
    running_mean, running_var : array of shape (C,), optional
        Updated in place, with the batch average of the per-instance mean and
        unbiased variance, when ``use_input_stats``; used instead of the input's
        statistics when ``use_input_stats=False``.
    use_input_stats : bool
        Normalize with each instance's statistics (PyTorch's default).
    momentum : float or None
        Running-average factor; None is the cumulative average and needs
        ``num_batches_tracked``.
    eps : float
        Added to the variance; must be positive.
    axis : int
        The channel axis.
    num_batches_tracked : integer array of one element, optional
        Incremented in place each call that updates running statistics.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.
    """
    return instance_norm_forward(x, **kwargs)[0]


def instance_norm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`instance_norm_forward`: ``(dx, dweight, dbias)``, None for absent params."""
    return _run_backward("instance_norm", dy, cache, backend, ("weight", "bias"))




# ----------------------------------------------------------------------------- weight_norm

def _weight_norm_args(direction, magnitude, axis, log_scale, eps):
    """Validate weight_norm's arguments (named so as not to shadow the ``v`` module alias)."""
    x, p = _start(direction, "weight_norm", 1, "a weight with at least one axis")
    if axis is None:
        p.axis, slices = None, 1
        allowed = [(), (1,) * x.ndim]
    else:
        p.axis = v.axes(axis, x.ndim)[0]
        slices = x.shape[p.axis]
        keepdims = tuple(slices if i == p.axis else 1 for i in range(x.ndim))
        allowed = [(slices,), keepdims]
    g = v.as_array("g", magnitude)
    if tuple(g.shape) not in allowed:
        raise ValueError(f"g has shape {tuple(g.shape)}; expected one of {sorted(set(allowed))} "
                         f"(one magnitude per slice along axis {p.axis})")
    p.g_shape, p.g_dtype = tuple(g.shape), g.dtype
    p.g = _in_compute_dtype(g, p.cdtype)
    p.log_scale = bool(log_scale)
    p.eps = v.at_least("eps", eps, 0)
    return x, p


@_planned
def weight_norm_forward(v, g, *, axis=0, log_scale=False, eps=0.0, backend=None):
    """Weight normalization that also returns the cache for :func:`weight_norm_backward`.

    See :func:`weight_norm` for the arguments. ``cache.rstd`` is ``1 / ||v||`` per
    slice (with ``eps`` inside the root); ``cache.mean`` is None.
    """
    x, p = _weight_norm_args(v, g, axis, log_scale, eps)
    return _run_forward("weight_norm", x, p, backend, g)


def weight_norm(v, g, **kwargs):
    """Weight normalization (Salimans & Kingma 2016): ``w = g * v / ||v||``.

    Parameters
    ----------
    v : array
        The direction, float16, float32 or float64.
    g : array
        The magnitude, one per slice along ``axis``: shape ``(v.shape[axis],)`` or
        PyTorch's keepdims shape (1 everywhere but ``axis``); a scalar when ``axis``
        is None. With ``log_scale`` it is ``s`` and the magnitude is ``exp(s)``.
    axis : int or None
        The axis that is kept: the norm runs over every other axis (0: one norm per
        output unit of a linear or conv weight). None: over all of ``v``.
    log_scale : bool
        Take ``g = exp(s)`` (the exponential parameterisation of the paper).
    eps : float
        Added to the squared norm, so a zero slice of ``v`` gives zeros rather
        than NaN; 0 (the default) matches ``torch._weight_norm``.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    w : array
        The weight, with the shape and dtype of ``v``.
    """
    return weight_norm_forward(v, g, **kwargs)[0]


def weight_norm_backward(dw, cache, *, backend=None):
    """Gradients of :func:`weight_norm_forward`: ``(dv, dg)``, ``dg`` in ``g``'s shape and dtype
    (``ds`` for ``s`` with ``log_scale``)."""
    return _run_backward("weight_norm", dw, cache, backend, ("g",))


# ----------------------------------------------------------------------------- spectral_norm

@_planned
def spectral_norm_forward(w, u, *, n_power_iterations=1, eps=1e-12, axis=0, training=True, backend=None):
    """Spectral normalization that also returns the cache for :func:`spectral_norm_backward`.

    See :func:`spectral_norm` for the arguments. ``cache.sigma`` is the estimated
    largest singular value; ``cache.rstd`` is ``1 / max(sigma, eps)``.
    """
    x, p = _start(w, "spectral_norm", 1, "a weight with at least one axis")
    p.axis = v.axes(axis, x.ndim)[0]
    rows = x.shape[p.axis]
    p.training = bool(training)
    check = v.buffer if p.training else v.param
    p.u = check("u", u, (rows,), f"one entry per slice of w along axis {p.axis}")
    if p.u is None:
        raise ValueError("u is required: the power iteration's left singular vector estimate")
    n = n_power_iterations
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_power_iterations must be an integer >= 1, got {n!r}")
    p.n_power_iterations = int(n)
    p.eps = v.positive("eps", eps)
    return _run_forward("spectral_norm", x, p, backend, u)


def spectral_norm(w, u, **kwargs):
    """Spectral normalization (Miyato et al. 2018): ``w / sigma(W)``.

    ``W`` is ``w`` reshaped to ``(w.shape[axis], -1)``. When training, each power
    iteration computes ``v = normalize(W^T u)`` and ``u = normalize(W v)``, as
    PyTorch does, and ``u`` is updated in place; in eval ``v = normalize(W^T u)``
    from the stored ``u`` and nothing is written. ``sigma = u^T W v``, clamped
    below by ``eps`` so a zero weight gives zeros rather than NaN. Gradients treat
    ``u`` and ``v`` as constants.

    Parameters
    ----------
    w : array
        The weight, float16, float32 or float64.
    u : array of shape (w.shape[axis],)
        The left singular vector estimate; updated in place when ``training``.
    n_power_iterations : int
        Power iterations per training call (at least 1).
    eps : float
        Floor of the vector norms and of ``sigma``.
    axis : int
        The axis of ``w`` that becomes the rows of ``W`` (0 for linear and conv weights).
    training : bool
        Run the power iteration and update ``u``.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    w_sn : array
        ``w / sigma``, with the shape and dtype of ``w``.
    """
    return spectral_norm_forward(w, u, **kwargs)[0]


def spectral_norm_backward(dy, cache, *, backend=None):
    """Gradient of :func:`spectral_norm_forward`: ``(dw,)``, with u and v held constant."""
    return _run_backward("spectral_norm", dy, cache, backend, ())


# ----------------------------------------------------------------------------- batch_renorm

@_planned
def batch_renorm_forward(x, *, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                         eps=1e-5, rmax=3.0, dmax=5.0, axis=1, num_batches_tracked=None, backend=None):
    """Batch renormalization that also returns the cache for :func:`batch_renorm_backward`.

    See :func:`batch_renorm` for the arguments. ``cache.mean``/``cache.rstd`` are
    the batch's statistics when training (the running ones in eval).
    """
    if running_mean is None or running_var is None:
        raise ValueError("batch_renorm needs running_mean and running_var: r and d are measured against them")
    x, p = _batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                            num_batches_tracked, "batch_renorm")
    p.rmax, p.dmax = v.at_least("rmax", rmax, 1), v.at_least("dmax", dmax, 0)
    return _run_forward("batch_renorm", x, p, backend, weight, bias, running_mean, running_var)


def batch_renorm(x, **kwargs):
    """Batch renormalization (Ioffe 2017): batch norm corrected towards the running statistics.

    When training, ``y = weight * (xhat * r + d) + bias`` with ``xhat`` the batch-
    normalized input, ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` from the running statistics
    (mu, sigma**2 = running_var + eps), which are then updated as batch norm
    does; r and d get no gradient. In eval it is batch norm with the running
    statistics. ``rmax=1, dmax=0`` is exactly batch norm.

    Parameters
    ----------
    x : array, shape (N, C, ...) or channels-last with ``axis``
        Float16, float32 or float64 input.
    running_mean, running_var : array of shape (C,)
        Required; updated in place when training.
    weight, bias : array of shape (C,), optional
        Affine parameters.
    training : bool
        Renormalize with the batch statistics and update the running ones.
    momentum : float or None
        Running-average factor (None: cumulative average, with ``num_batches_tracked``).
    eps : float
        Added to the variances; must be positive.
    rmax, dmax : float
        Clipping bounds of r (>= 1) and d (>= 0); the layer's schedule raises them
        from 1 and 0.
    axis : int
        The channel axis.
    num_batches_tracked : integer array of one element, optional
        Incremented in place each training call.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.
    """
    return batch_renorm_forward(x, **kwargs)[0]


def batch_renorm_backward(dy, cache, *, backend=None):
    """Gradients of :func:`batch_renorm_forward`: ``(dx, dweight, dbias)``, r and d held constant."""
    return _run_backward("batch_renorm", dy, cache, backend, ("weight", "bias"))


# ----------------------------------------------------------------------------- local_response_norm

@_planned
def local_response_norm_forward(x, size, *, alpha=1e-4, beta=0.75, k=1.0, axis=1, backend=None):
    """Local response normalization that also returns the cache for
    :func:`local_response_norm_backward`. See :func:`local_response_norm`."""
    x, p = _start(x, "local_response_norm", 3, "(N, C, ...) input")
    p.axis = v.channel_axis(axis, x.ndim)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    p.size = int(size)
    p.alpha, p.beta, p.k = v.real("alpha", alpha), v.real("beta", beta), v.real("k", k)
    return _run_forward("local_response_norm", x, p, backend)


def local_response_norm(x, size, **kwargs):
    """Local response normalization across channels, PyTorch's definition.

    ``y_c = x_c / (k + alpha / size * sum(x_c'**2))**beta`` over the window of
    ``size`` channels ``c - size // 2 <= c' <= c + (size - 1) // 2``, zero padded
    at the ends (alpha is divided by ``size``, as PyTorch, Caffe and cuDNN do).

    Parameters
    ----------
    x : array, shape (N, C, ...) with at least 3 dimensions
        Float16, float32 or float64 input.
    size : int
        Number of channels in the window (even sizes as PyTorch places them).
    alpha, beta, k : float
        The scale, the exponent and the additive constant.
    axis : int
        The channel axis.
    backend : {"numpy", "cpu", "cuda"}, optional
        Overrides the backend inferred from the arrays.

    Returns
    -------
    y : array
        Same kind, shape and dtype as ``x``.
    """
    return local_response_norm_forward(x, size, **kwargs)[0]


def local_response_norm_backward(dy, cache, *, backend=None):
    """Gradient of :func:`local_response_norm_forward`: ``(dx,)``."""
    return _run_backward("local_response_norm", dy, cache, backend, ())
