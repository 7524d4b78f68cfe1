"""Per-channel normalization with running statistics: batch norm, batch renorm (and instance norm's base)."""
from __future__ import annotations

import numpy as np

from .. import _validate as v
from .. import functional as F
from ._module import Module, axis_arg, momentum_arg, positive_int


class _NormBase(Module):
    """Shared by batch and instance norm (PyTorch's ``_NormBase``): per-channel affine
    parameters, running statistics and the input checks.

    ``_ndims`` lists the input dimensions a subclass accepts (None: any, at least 2).
    """

    _ndims = None
    _layout = ""
    _repr_fields = ("num_features", "eps", "momentum", "affine", "track_running_stats", "axis")

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, *, axis, dtype, backend):
        super().__init__(dtype=dtype, backend=backend)
        self.num_features = positive_int("num_features", num_features)
        self.eps = v.positive("eps", eps)
        self.momentum = momentum_arg(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.axis = axis_arg(axis)
        if self.affine:
            self._param("weight", np.ones(self.num_features))
            self._param("bias", np.zeros(self.num_features))
        if self.track_running_stats:
            self._buffer("running_mean", np.zeros(self.num_features))
            self._buffer("running_var", np.ones(self.num_features))
            self._buffer("num_batches_tracked", np.zeros((), np.int64))

    def _check_input(self, x):
        """ValueError unless ``x`` has an accepted rank and ``num_features`` channels along ``axis``."""
        shape, name = tuple(x.shape), type(self).__name__
        if self._ndims is not None and len(shape) not in self._ndims:
            ranks = " or ".join(f"{n}-D" for n in self._ndims)
            raise ValueError(f"{name} expects {ranks} input {self._layout}, got shape {shape}")
        axis = v.channel_axis(self.axis, len(shape))
        if shape[axis] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expects {self.num_features} channels along "
                             f"axis {self.axis}, got input of shape {shape}")

    def _stats_kwargs(self):
        """The arrays and settings every per-channel functional op takes."""
        return dict(weight=self.params.get("weight"), bias=self.params.get("bias"),
                    running_mean=self.buffers.get("running_mean"), running_var=self.buffers.get("running_var"),
                    num_batches_tracked=self.buffers.get("num_batches_tracked"),
                    momentum=self.momentum, eps=self.eps, axis=self.axis, backend=self.backend)


class BatchNorm(_NormBase):
    """Batch normalization over any input of at least 2 dimensions (PyTorch's ``_BatchNorm``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel. In training
    mode, mean and (biased) variance are the batch's and the running statistics
    are updated (with the unbiased variance); in eval mode the running
    statistics are used and left alone. With ``track_running_stats=False`` batch
    statistics are used in both modes.

    :class:`BatchNorm1d`, :class:`BatchNorm2d` and :class:`BatchNorm3d` only add
    PyTorch's check of the input's rank.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float
        Added to the variance.
    momentum : float or None
        Running-average factor; None is the cumulative average
        (``1 / num_batches_tracked``).
    affine : bool
        Learn a per-channel ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked``.
    axis : int
        The channel axis of the input (1 for ``(N, C, ...)``, -1 for channels-last).
    dtype : float dtype
        dtype of the parameters and running statistics.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.

    Notes
    -----
    Subclasses that compute batch norm another way (SyncBatchNorm, which
    reduces the statistics across processes; :class:`BatchRenorm`) override
    only the two hooks :meth:`_functional_forward` (given ``x`` and
    :func:`numbanorm.batch_norm_forward`'s keyword arguments, returns
    ``(y, cache)``) and :meth:`_functional_backward` (given ``dy`` and that
    cache, returns ``(dx, dweight, dbias)``); parameters, running statistics,
    modes, state dict and ``to`` are inherited::

        class SyncBatchNorm(BatchNorm):
            def _functional_forward(self, x, **kwargs):
                return sync_batch_norm_forward(x, comm=self.comm, **kwargs)

            def _functional_backward(self, dy, cache):
                return sync_batch_norm_backward(dy, cache)

    Examples
    --------
    >>> bn = BatchNorm2d(16)
    >>> y = bn(x)                       # doctest: +SKIP
    >>> dx = bn.backward(dy)            # doctest: +SKIP
    >>> bn.grads["weight"]              # doctest: +SKIP
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 axis=1, dtype=np.float32, backend=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         axis=axis, dtype=dtype, backend=backend)

    def _forward(self, x):
        self._check_input(x)
        batch_stats = self.training or not self.track_running_stats
        return self._functional_forward(x, training=batch_stats, **self._stats_kwargs())

    def _backward(self, dy, cache):
        dx, dweight, dbias = self._functional_backward(dy, cache)
        return dx, {"weight": dweight, "bias": dbias}

    # The two hooks a subclass swaps to compute batch norm another way.

    def _functional_forward(self, x, **kwargs):
        """Hook: ``batch_norm_forward(x, **kwargs) -> (y, cache)``.

        ``kwargs`` are :func:`numbanorm.batch_norm_forward`'s keyword arguments:
        ``running_mean, running_var, weight, bias, training, momentum, eps, axis,
        num_batches_tracked, backend``; the running statistics are updated in place.
        """
        return F.batch_norm_forward(x, **kwargs)

    def _functional_backward(self, dy, cache):
        """Hook: ``batch_norm_backward(dy, cache) -> (dx, dweight, dbias)``."""
        return F.batch_norm_backward(dy, cache)


class BatchNorm1d(BatchNorm):
    """Batch normalization of ``(N, C)`` or ``(N, C, L)`` input; see :class:`BatchNorm`."""

    _ndims, _layout = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2d(BatchNorm):
    """Batch normalization of ``(N, C, H, W)`` input; see :class:`BatchNorm`."""

    _ndims, _layout = (4,), "(N, C, H, W)"


class BatchNorm3d(BatchNorm):
    """Batch normalization of ``(N, C, D, H, W)`` input; see :class:`BatchNorm`."""

    _ndims, _layout = (5,), "(N, C, D, H, W)"


def _ramp(step, start, end, steps):
    """``start`` until ``steps[0]``, then linearly to ``end`` at ``steps[1]``, then ``end``."""
    first, last = steps
    if step <= first:
        return start
    if step >= last:
        return end
    return start + (end - start) * (step - first) / (last - first)


def _step_range(name, steps):
    try:
        first, last = (int(s) for s in steps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two step counts (first, last), got {steps!r}") from None
    if not 0 <= first <= last:
        raise ValueError(f"{name} must satisfy 0 <= first <= last, got {steps!r}")
    return first, last


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017) with the paper's schedule of the clipping bounds.

    Training normalizes with the batch statistics corrected towards the running
    ones, ``y = weight * (xhat * r + d) + bias`` with
    ``r = clip(sigma_B / sigma, 1/rmax_t, rmax_t)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax_t, dmax_t)`` (see
    :func:`numbanorm.batch_renorm`); eval is batch norm with the running
    statistics. The bounds start as plain batch norm (``rmax_t = 1``,
    ``dmax_t = 0``) and are relaxed linearly to ``rmax`` over the training
    steps ``rmax_steps`` and to ``dmax`` over ``dmax_steps``. The buffer
    ``step`` counts training forwards (saved in the state dict).

    Parameters
    ----------
    num_features, eps, momentum, affine, axis, dtype, backend
        As :class:`BatchNorm` (running statistics are always tracked).
    rmax : float
        Final bound of ``r`` (>= 1).
    dmax : float
        Final bound of ``d`` (>= 0).
    rmax_steps, dmax_steps : (int, int)
        The step at which each bound starts to relax and the step it reaches
        its final value. The defaults, (5000, 40000) and (5000, 25000), are the
        schedule used with the paper's settings in common implementations.

    Attributes
    ----------
    current_rmax, current_dmax : float
        The bounds the next training forward uses.
    """

    _repr_fields = ("num_features", "eps", "momentum", "affine", "axis", "rmax", "dmax", "rmax_steps", "dmax_steps")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, rmax=3.0, dmax=5.0,
                 rmax_steps=(5000, 40000), dmax_steps=(5000, 25000), axis=1, dtype=np.float32, backend=None):
        self.rmax, self.dmax = v.at_least("rmax", rmax, 1), v.at_least("dmax", dmax, 0)
        self.rmax_steps = _step_range("rmax_steps", rmax_steps)
        self.dmax_steps = _step_range("dmax_steps", dmax_steps)
        super().__init__(num_features, eps, momentum, affine, True, axis=axis, dtype=dtype, backend=backend)
        self._buffer("step", np.zeros((), np.int64))

    @property
    def current_rmax(self):
        return _ramp(int(self.buffers["step"]), 1.0, self.rmax, self.rmax_steps)

    @property
    def current_dmax(self):
        return _ramp(int(self.buffers["step"]), 0.0, self.dmax, self.dmax_steps)

    def _forward(self, x):
        out = super()._forward(x)
        if self.training:
            self.buffers["step"] += 1
        return out

    def _functional_forward(self, x, **kwargs):
        return F.batch_renorm_forward(x, rmax=self.current_rmax, dmax=self.current_dmax, **kwargs)

    def _functional_backward(self, dy, cache):
        return F.batch_renorm_backward(dy, cache)


class BatchRenorm1d(BatchRenorm):
    """Batch renormalization of ``(N, C)`` or ``(N, C, L)`` input; see :class:`BatchRenorm`."""

    _ndims, _layout = (2, 3), "(N, C) or (N, C, L)"


class BatchRenorm2d(BatchRenorm):
    """Batch renormalization of ``(N, C, H, W)`` input; see :class:`BatchRenorm`."""

    _ndims, _layout = (4,), "(N, C, H, W)"


class BatchRenorm3d(BatchRenorm):
    """Batch renormalization of ``(N, C, D, H, W)`` input; see :class:`BatchRenorm`."""

    _ndims, _layout = (5,), "(N, C, D, H, W)"
