"""Stateful normalization layers: thin wrappers over :mod:`numbanorm.functional`.

Every layer is a :class:`Module`: ``params``/``grads``/``buffers`` dicts with
PyTorch's names, ``forward(x)`` (or ``layer(x)``), ``backward(dy) -> dx`` that
adds into ``grads``, ``zero_grad()``, ``train()``/``eval()``,
``state_dict()``/``load_state_dict()`` compatible with PyTorch's, and
``to(backend)``.

>>> import numbanorm as nbn
>>> bn = nbn.layers.BatchNorm2d(16)
>>> y = bn(x)                                # doctest: +SKIP
>>> dx = bn.backward(dy)                     # doctest: +SKIP
"""
from ._module import IncompatibleKeys, Module
from .batch_norm import (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchRenorm, BatchRenorm1d,
                         BatchRenorm2d, BatchRenorm3d)
from .fold import fold_batch_norm
from .normalization import (GroupNorm, InstanceNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm,
                            LocalResponseNorm, RMSNorm)
from .weights import SpectralNorm, WeightNorm

__all__ = [
    "Module", "IncompatibleKeys",
    "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "BatchRenorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d",
    "InstanceNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "LayerNorm", "RMSNorm", "GroupNorm", "LocalResponseNorm",
    "WeightNorm", "SpectralNorm",
    "fold_batch_norm",
]
