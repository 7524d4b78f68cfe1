"""Folding an eval-mode batch norm into the linear or convolution layer before it."""
from __future__ import annotations

import numpy as np

from .. import _validate as v
from . import _arrays
from .batch_norm import BatchNorm


def fold_batch_norm(weight, bias, bn, *, axis=0):
    """The weight and bias of a linear or convolution layer with the batch norm after it folded in.

    In eval mode ``bn(layer(x; weight, bias)) == layer(x; w, b)`` with
    ``s = bn.weight / sqrt(bn.running_var + bn.eps)``, ``w = weight * s`` along the
    output axis and ``b = (bias - bn.running_mean) * s + bn.bias``. Computed in
    float64 and returned in the dtypes of the inputs.

    Parameters
    ----------
    weight : array
        The layer's weight: ``(out, in)`` for a linear layer, ``(out, in, *kernel)``
        for a convolution; host or device array.
    bias : array of shape (out,) or None
        The layer's bias (None: a layer without bias, taken as zeros).
    bn : BatchNorm
        A batch norm layer (any of the BatchNorm and BatchRenorm classes) in eval
        mode, with running statistics, over ``out`` channels.
    axis : int
        The output axis of ``weight`` (0; 1 for transposed convolutions).

    Returns
    -------
    weight, bias : array
        The folded parameters, of the kind (host or device), shape and dtype of
        ``weight`` (the bias in ``bias``'s dtype, or ``weight``'s when it is None).

    Raises
    ------
    TypeError
        If ``bn`` is not a batch norm layer or the arrays are not float.
    ValueError
        If ``bn`` is in training mode or keeps no running statistics, or the
        shapes do not match ``bn.num_features``.

    Examples
    --------
    >>> bn = BatchNorm1d(4).eval()
    >>> w, b = fold_batch_norm(np.ones((4, 3)), np.zeros(4), bn)
    """
    if not isinstance(bn, BatchNorm):
        raise TypeError(f"bn must be a BatchNorm layer, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("bn is in training mode, where it normalizes with batch statistics: "
                         "call bn.eval() before folding it")
    if "running_mean" not in bn.buffers:
        raise ValueError("bn has no running statistics (track_running_stats=False): it always "
                         "normalizes with batch statistics, which cannot be folded")
    w = _arrays.to_host(weight)
    v.float_dtype("weight", w)
    axis = v.axes(axis, w.ndim)[0]
    channels = bn.num_features
    if w.shape[axis] != channels:
        raise ValueError(f"weight has shape {tuple(w.shape)}: {w.shape[axis]} outputs along axis {axis}, "
                         f"but bn has {channels} features")
    b = None if bias is None else _arrays.to_host(bias)
    if b is not None:
        v.float_dtype("bias", b)
        if tuple(b.shape) != (channels,):
            raise ValueError(f"bias has shape {tuple(b.shape)}; expected ({channels},)")

    def stat(name, default):
        a = bn.params.get(name, bn.buffers.get(name))
        return np.full(channels, default) if a is None else _arrays.to_host(a).astype(np.float64)

    scale = stat("weight", 1.0) / np.sqrt(stat("running_var", 1.0) + bn.eps)
    shift = stat("bias", 0.0) - stat("running_mean", 0.0) * scale
    along = [1] * w.ndim
    along[axis] = channels
    new_w = (w.astype(np.float64) * scale.reshape(along)).astype(w.dtype)
    new_b = shift if b is None else b.astype(np.float64) * scale + shift
    new_b = new_b.astype(w.dtype if b is None else b.dtype)
    if _arrays.on_device(weight):
        return _arrays.to_device(new_w), _arrays.to_device(new_b)
    return new_w, new_b
