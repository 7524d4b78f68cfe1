"""numbanorm: every normalization layer for NumPy training code, as Numba kernels.

>>> import numbanorm as nbn
>>> y, cache = nbn.layer_norm_forward(x)           # doctest: +SKIP
>>> dx, dweight, dbias = nbn.layer_norm_backward(dy, cache)  # doctest: +SKIP
"""
from ._dispatch import available_backends, backend, get_backend, set_backend
from ._pool import empty_cache
from .functional import *  # noqa: F401,F403  (the public ops)
from .functional import __all__ as _ops
from . import layers
from .layers import *  # noqa: F401,F403  (the stateful layers)
from .layers import __all__ as _layers

__version__ = "0.1.0"

__all__ = ["available_backends", "backend", "empty_cache", "get_backend", "set_backend", "layers", *_ops, *_layers]
