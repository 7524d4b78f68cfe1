"""Instance, layer, RMS, group and local response normalization layers."""
from __future__ import annotations

import numpy as np

from .. import _validate as v
from .. import functional as F
from ._module import Module, axis_arg, positive_int
from .batch_norm import _NormBase


class InstanceNorm(_NormBase):
    """Instance normalization over any input of at least 3 dimensions.

    Statistics are per sample and channel, over the spatial axes.
    :class:`InstanceNorm1d`, :class:`InstanceNorm2d` and :class:`InstanceNorm3d`
    only add PyTorch's check of the input's rank.

    With ``track_running_stats`` the running statistics are updated in training
    mode (with the batch average of the per-instance statistics) and used in eval
    mode; otherwise each instance's statistics are used in both modes.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float
        Added to the variance.
    momentum : float or None
        Running-average factor; None is the cumulative average
        (``1 / num_batches_tracked``; PyTorch's InstanceNorm neither counts nor
        averages then).
    affine : bool
        Learn a per-channel ``weight`` and ``bias`` (off by default, as PyTorch).
    track_running_stats : bool
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked`` (off
        by default, as PyTorch). ``num_batches_tracked`` counts the training
        forwards (PyTorch's InstanceNorm keeps it at 0).
    axis : int
        The channel axis of the input.
    dtype : float dtype
        dtype of the parameters and running statistics.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, *,
                 axis=1, dtype=np.float32, backend=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         axis=axis, dtype=dtype, backend=backend)

    def _forward(self, x):
        self._check_input(x)
        input_stats = self.training or not self.track_running_stats
        return F.instance_norm_forward(x, use_input_stats=input_stats, **self._stats_kwargs())

    def _backward(self, dy, cache):
        dx, dweight, dbias = F.instance_norm_backward(dy, cache)
        return dx, {"weight": dweight, "bias": dbias}


class InstanceNorm1d(InstanceNorm):
    """Instance normalization of ``(N, C, L)`` input; see :class:`InstanceNorm`."""

    _ndims, _layout = (3,), "(N, C, L)"


class InstanceNorm2d(InstanceNorm):
    """Instance normalization of ``(N, C, H, W)`` input; see :class:`InstanceNorm`."""

    _ndims, _layout = (4,), "(N, C, H, W)"


class InstanceNorm3d(InstanceNorm):
    """Instance normalization of ``(N, C, D, H, W)`` input; see :class:`InstanceNorm`."""

    _ndims, _layout = (5,), "(N, C, D, H, W)"


def _shape_arg(normalized_shape):
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (normalized_shape,)
    if not isinstance(normalized_shape, (tuple, list)):
        raise TypeError(f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}")
    shape = tuple(positive_int("normalized_shape", n) for n in normalized_shape)
    if not shape:
        raise ValueError("normalized_shape must name at least one dimension")
    return shape


def _axes_arg(axis, count):
    """LayerNorm's and RMSNorm's ``axis``: an int or a tuple of ``count`` ints."""
    items = (axis,) if isinstance(axis, (int, np.integer)) else axis
    if not isinstance(items, (tuple, list)) or not all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in items):
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
    if len(items) != count:
        raise ValueError(f"axis={axis!r} names {len(items)} axes; normalized_shape has {count}")
    return int(axis) if items is not axis else tuple(int(a) for a in items)


class _RowNorm(Module):
    """Layer and RMS norm: normalize over the trailing axes (or ``axis``), ``normalized_shape`` long."""

    _repr_fields = ("normalized_shape", "eps", "elementwise_affine", "axis")

    def __init__(self, normalized_shape, eps, elementwise_affine, *, axis, dtype, backend):
        super().__init__(dtype=dtype, backend=backend)
        self.normalized_shape = _shape_arg(normalized_shape)
        self.eps = None if eps is None else v.positive("eps", eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.axis = None if axis is None else _axes_arg(axis, len(self.normalized_shape))
        if self.elementwise_affine:
            self._param("weight", np.ones(self.normalized_shape))

    def _axes(self, x):
        """The normalized axes of ``x``; ValueError unless ``x`` has ``normalized_shape`` over them."""
        shape, k = tuple(x.shape), len(self.normalized_shape)
        if self.axis is None:
            axes = tuple(range(len(shape) - k, len(shape))) if len(shape) >= k else None
        else:
            axes = v.axes(self.axis, len(shape))
        if axes is None or tuple(shape[a] for a in axes) != self.normalized_shape:
            where = "as its last dimensions" if self.axis is None else f"along axis {self.axis}"
            raise ValueError(f"{type(self).__name__}: given normalized_shape={self.normalized_shape}, "
                             f"expected input with that shape {where}, got input of shape {shape}")
        return axes


class LayerNorm(_RowNorm):
    """Layer normalization over the last ``len(normalized_shape)`` dimensions (or ``axis``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and biased variance
    over the normalized axes of each sample.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The shape of the input over the normalized axes.
    eps : float
        Added to the variance.
    elementwise_affine : bool
        Learn ``weight`` (ones) of shape ``normalized_shape``, and ``bias``
        (zeros) when ``bias`` is true.
    bias : bool
        Learn a bias as well (with ``elementwise_affine``).
    axis : int, tuple of int or None
        The normalized axes, when they are not the last ones (e.g. ``1`` for the
        channels of NCHW input); ``normalized_shape`` is the input's shape over
        them, in increasing axis order. None: the last dimensions, as PyTorch.
    dtype : float dtype
        dtype of the parameters.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.
    """

    _repr_fields = ("normalized_shape", "eps", "elementwise_affine", "bias", "axis")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, axis=None,
                 dtype=np.float32, backend=None):
        super().__init__(normalized_shape, eps, elementwise_affine, axis=axis, dtype=dtype, backend=backend)
        self.bias = bool(bias)
        if self.elementwise_affine and self.bias:
            self._param("bias", np.zeros(self.normalized_shape))

    def _forward(self, x):
        return F.layer_norm_forward(x, weight=self.params.get("weight"), bias=self.params.get("bias"),
                                    axis=self._axes(x), eps=self.eps, backend=self.backend)

    def _backward(self, dy, cache):
        dx, dweight, dbias = F.layer_norm_backward(dy, cache)
        return dx, {"weight": dweight, "bias": dbias}


class RMSNorm(_RowNorm):
    """Root-mean-square normalization over the last ``len(normalized_shape)`` dimensions (or ``axis``).

    ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The shape of the input over the normalized axes.
    eps : float or None
        Added to the mean square; None is ``finfo(x.dtype).eps``, as PyTorch.
    elementwise_affine : bool
        Learn ``weight`` (ones) of shape ``normalized_shape``.
    axis : int, tuple of int or None
        The normalized axes when they are not the last ones; see :class:`LayerNorm`.
    dtype : float dtype
        dtype of the parameters.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *, axis=None,
                 dtype=np.float32, backend=None):
        super().__init__(normalized_shape, eps, elementwise_affine, axis=axis, dtype=dtype, backend=backend)

    def _forward(self, x):
        return F.rms_norm_forward(x, weight=self.params.get("weight"), axis=self._axes(x), eps=self.eps,
                                  backend=self.backend)

    def _backward(self, dy, cache):
        dx, dweight = F.rms_norm_backward(dy, cache)
        return dx, {"weight": dweight}


class GroupNorm(Module):
    """Group normalization: statistics per sample over each group of channels and all spatial axes.

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        Number of channels ``C``.
    eps : float
        Added to the variance.
    affine : bool
        Learn a per-channel ``weight`` (ones) and ``bias`` (zeros).
    axis : int
        The channel axis of the input.
    dtype : float dtype
        dtype of the parameters.
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.
    """

    _repr_fields = ("num_groups", "num_channels", "eps", "affine", "axis")

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, axis=1, dtype=np.float32, backend=None):
        super().__init__(dtype=dtype, backend=backend)
        self.num_groups = positive_int("num_groups", num_groups)
        self.num_channels = positive_int("num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.eps, self.affine, self.axis = v.positive("eps", eps), bool(affine), axis_arg(axis)
        if self.affine:
            self._param("weight", np.ones(self.num_channels))
            self._param("bias", np.zeros(self.num_channels))

    def _forward(self, x):
        shape = tuple(x.shape)
        if len(shape) < 2 or shape[v.channel_axis(self.axis, len(shape))] != self.num_channels:
            raise ValueError(f"GroupNorm expects {self.num_channels} channels along axis {self.axis}, "
                             f"got input of shape {shape}")
        return F.group_norm_forward(x, self.num_groups, weight=self.params.get("weight"),
                                    bias=self.params.get("bias"), axis=self.axis, eps=self.eps,
                                    backend=self.backend)

    def _backward(self, dy, cache):
        dx, dweight, dbias = F.group_norm_backward(dy, cache)
        return dx, {"weight": dweight, "bias": dbias}


class LocalResponseNorm(Module):
    """Local response normalization across channels (PyTorch's; alpha divided by ``size``).

    ``y_c = x_c / (k + alpha / size * sum(x_c'**2))**beta`` over a window of
    ``size`` neighbouring channels. No parameters or buffers.

    Parameters
    ----------
    size : int
        Number of channels in the window.
    alpha, beta, k : float
        The scale, the exponent and the additive constant.
    axis : int
        The channel axis of the input (at least 3 dimensions).
    backend : {None, "numpy", "cpu", "cuda"}
        Backend of the functional calls; None follows the arrays.
    """

    _repr_fields = ("size", "alpha", "beta", "k", "axis")

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, *, axis=1, dtype=np.float32, backend=None):
        super().__init__(dtype=dtype, backend=backend)
        self.size = positive_int("size", size)
        self.alpha, self.beta, self.k = v.real("alpha", alpha), v.real("beta", beta), v.real("k", k)
        self.axis = axis_arg(axis)

    def _forward(self, x):
        return F.local_response_norm_forward(x, self.size, alpha=self.alpha, beta=self.beta, k=self.k,
                                             axis=self.axis, backend=self.backend)

    def _backward(self, dy, cache):
        (dx,) = F.local_response_norm_backward(dy, cache)
        return dx, {}
